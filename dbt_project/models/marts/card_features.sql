{#- The delete reads only the dates this run builds, not every night the mart holds. -#}
{{ config(
    unique_key=['card_id', 'feature_date'],
    incremental_predicates=[built_dates('DBT_INCREMENTAL_TARGET.feature_date')],
) }}

{%- set aggregates = mart_aggregates('card') %}
{#- One-date runs add up the daily state, others the windowed events (macros/entity_state.sql). -#}
{%- set daily = entity_state_enabled() %}
-- depends_on: {{ ref('int_card_daily') }}
-- depends_on: {{ ref('int_windowed_transactions') }}

with

transactions as (

    select card_id, event_time
    from {{ ref('stg_transactions') }}

),

windowed as not materialized (
{%- if daily %}

    {{ daily_windowed(ref('int_card_daily'), 'card_id', 30) }}
{%- else %}

    -- a card's features look back 30 days, so a card has a row at D only with an event
    -- in those 30 days
    select
        feature_date,
        event_time,
        event_date,
        card_id,
        amount,
        amount_cents,
        is_foreign,
        is_night,
        is_card_not_present
    from {{ ref('int_windowed_transactions') }}
    where {{ built_dates() }} and {{ in_window(30) }}

{%- endif %}

),

first_seen as (
{%- if daily %}

    {{ daily_first_seen(ref('int_card_daily'), 'card_id') }}
{%- else %}

    -- global first event = first event before D for every card with a row at D
    select card_id, min(event_time) as first_seen_at
    from transactions
    group by card_id

{%- endif %}

),

distinct_values as (

    select * from {{ ref('int_card_distinct') }}
    where {{ built_dates() }}

),

{{ window_features('windowed', 'card_id', aggregates, daily=daily, distinct='distinct_values') }},

final as (

    select
        aggregated.card_id,
        aggregated.feature_date,
        {{ window_aggregates(aggregates, columns_of='aggregated') }},
        {{ days_between('first_seen.first_seen_at', 'aggregated.feature_date') }} as days_since_first_seen,
        {{ days_between('aggregated.last_seen_at', 'aggregated.feature_date') }} as days_since_last_txn,
        coalesce(aggregated.txn_count_1d / nullif(aggregated.txn_count_30d / 30.0, 0), 0)
            as velocity_count_1d_vs_30d
    from aggregated
    inner join first_seen
        on first_seen.card_id = aggregated.card_id

)

select * from final
