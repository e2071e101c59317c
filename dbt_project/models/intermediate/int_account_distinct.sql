{{ config(materialized='table') }}

{#-
  The account mart's distinct counts (distinct_<value>_<days>d) as a query of their own: its
  hash aggregates are the mart's largest, and in one query with the rest DuckDB holds
  them all at once (out of memory at a million accounts under a 2.5 GB limit).
-#}
{%- set aggregates = mart_aggregates('account') %}

-- Both ways are always dependencies: one-date runs read the entity state, others the
-- windowed events (macros/entity_state.sql).
-- depends_on: {{ ref('int_account_seen') }}
-- depends_on: {{ ref('int_windowed_transactions') }}
{%- if entity_state_enabled() %}

with

{{ distinct_counts_from_state(ref('int_account_seen'), 'account_id', aggregates) }}

select * from counted
{%- else %}

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
{%- endif %}
