{{ config(unique_key=['account_id', 'feature_date']) }}

{%- set aggregates = [
    ([1, 7, 30, 90], [
        'txn_count', 'amount_sum', 'amount_mean', 'amount_std', 'amount_max',
        'distinct_merchants', 'distinct_countries', 'distinct_devices',
        'night_ratio', 'foreign_ratio', 'cnp_ratio', 'ecommerce_ratio',
    ]),
    ([30, 90], ['distinct_cards']),
    ([7, 30, 90], ['active_days']),
    ([90], ['fraud_labels']),
] %}

with

transactions as (

    select account_id, event_time
    from {{ ref('stg_transactions') }}

),

windowed as (

    select
        feature_date,
        event_time,
        event_date,
        account_id,
        card_id,
        merchant_id,
        amount,
        amount_cents,
        merchant_country,
        device_id,
        is_foreign,
        is_night,
        is_card_not_present,
        is_ecommerce,
        is_known_fraud
    from {{ ref('int_windowed_transactions') }}

),

first_seen as (

    -- the global first event is also the first event before D for every account that
    -- has a row at D (it had an event before D), so this cannot leak
    select account_id, min(event_time) as first_seen_at
    from transactions
    group by account_id

),

aggregated as (

    select
        account_id,
        feature_date,
        {{ window_aggregates(aggregates) }},
        max(event_time) as last_seen_at
    from windowed
    group by account_id, feature_date

),

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
