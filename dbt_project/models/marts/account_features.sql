{#- The delete reads only the dates this run builds, not every night the mart holds. -#}
{{ config(
    unique_key=['account_id', 'feature_date'],
    incremental_predicates=[built_dates('DBT_INCREMENTAL_TARGET.feature_date')],
) }}

{%- set aggregates = mart_aggregates('account') %}
{#- One-date runs add up the daily state, others the windowed events (macros/entity_state.sql). -#}
{%- set daily = entity_state_enabled() %}
-- depends_on: {{ ref('int_account_daily') }}
-- depends_on: {{ ref('int_windowed_transactions') }}

with

transactions as (

    select account_id, event_time
    from {{ ref('stg_transactions') }}

),

windowed as not materialized (
{%- if daily %}

    {{ daily_windowed(ref('int_account_daily'), 'account_id', 90) }}
{%- else %}

    select
        feature_date,
        event_time,
        event_date,
        account_id,
        amount,
        amount_cents,
        is_foreign,
        is_night,
        is_card_not_present,
        is_ecommerce
    from {{ ref('int_windowed_transactions') }}
    where {{ built_dates() }}

{%- endif %}

),

first_seen as (
{%- if daily %}

    {{ daily_first_seen(ref('int_account_daily'), 'account_id') }}
{%- else %}

    -- the global first event is also the first event before D for every account that
    -- has a row at D (it had an event before D), so this cannot leak
    select account_id, min(event_time) as first_seen_at
    from transactions
    group by account_id

{%- endif %}

),

known_frauds as (

    select feature_date, event_date, account_id
    from {{ ref('int_known_frauds') }}
    where {{ built_dates() }}

),

distinct_values as (

    select * from {{ ref('int_account_distinct') }}
    where {{ built_dates() }}

),

{{ window_features('windowed', 'account_id', aggregates, daily=daily, frauds='known_frauds', distinct='distinct_values') }},

final as (

    select
        aggregated.account_id,
        aggregated.feature_date,
        {{ window_aggregates(aggregates, columns_of='aggregated') }},
        {{ days_between('first_seen.first_seen_at', 'aggregated.feature_date') }} as days_since_first_seen,
        {{ days_between('aggregated.last_seen_at', 'aggregated.feature_date') }} as days_since_last_txn,
        -- spikes: the last day against the 30-day daily rate, the last week against 90 days
        coalesce(aggregated.txn_count_1d / nullif(aggregated.txn_count_30d / 30.0, 0), 0)
            as velocity_count_1d_vs_30d,
        coalesce(aggregated.amount_sum_7d / nullif(aggregated.amount_sum_90d / (90.0 / 7.0), 0), 0)
            as velocity_amount_7d_vs_90d
    from aggregated
    inner join first_seen
        on first_seen.account_id = aggregated.account_id

)

select * from final
