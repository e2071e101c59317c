{{ config(materialized='table') }}

{#-
  The account mart's distinct counts (distinct_<value>_<days>d) as a query of their own: its
  hash aggregates are the mart's largest, and in one query with the rest DuckDB holds
  them all at once (out of memory at a million accounts under a 2.5 GB limit).
-#}
{%- set aggregates = mart_aggregates('account') %}

with

windowed as not materialized (

    select
        feature_date,
        event_time,
        event_date,
        account_id,
        merchant_id,
        merchant_country,
        device_id,
        card_id
    from {{ ref('int_windowed_transactions') }}
    where {{ built_dates() }}

),

{{ distinct_counts('windowed', 'account_id', aggregates) }}

select * from counted
