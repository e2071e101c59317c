{{ config(materialized='table') }}

{#-
  The card mart's distinct counts (distinct_<value>_<days>d) as a query of their own: its
  hash aggregates are the mart's largest, and in one query with the rest DuckDB holds
  them all at once (out of memory at a million accounts under a 2.5 GB limit).
-#}
{%- set aggregates = mart_aggregates('card') %}

with

windowed as not materialized (
    -- a card's features look back 30 days
    select
        feature_date,
        event_time,
        event_date,
        card_id,
        merchant_id,
        merchant_country,
        device_id
    from {{ ref('int_windowed_transactions') }}
    where {{ built_dates() }} and {{ in_window(30) }}

),

{{ distinct_counts('windowed', 'card_id', aggregates) }}

select * from counted
