{{ config(materialized='table') }}

{#-
  The card mart's distinct counts (distinct_<value>_<days>d) as a query of their own: its
  hash aggregates are the mart's largest, and in one query with the rest DuckDB holds
  them all at once (out of memory at a million accounts under a 2.5 GB limit).
-#}
{%- set aggregates = mart_aggregates('card') %}

-- Both ways are always dependencies: one-date runs read the entity state, others the
-- windowed events (macros/entity_state.sql).
-- depends_on: {{ ref('int_card_seen') }}
-- depends_on: {{ ref('int_windowed_transactions') }}
{%- if entity_state_enabled() %}

with

{{ distinct_counts_from_state(ref('int_card_seen'), 'card_id', aggregates) }}

select * from counted
{%- else %}

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
{%- endif %}
