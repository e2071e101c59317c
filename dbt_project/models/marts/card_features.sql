{{ config(unique_key=['card_id', 'feature_date']) }}

{%- set aggregates = [
    ([1, 7, 30], [
        'txn_count', 'amount_sum', 'amount_mean', 'amount_std', 'amount_max',
        'distinct_merchants', 'distinct_countries',
        'night_ratio', 'foreign_ratio', 'cnp_ratio',
    ]),
    ([30], ['distinct_devices']),
] %}

with

transactions as (

    select card_id, event_time
    from {{ ref('stg_transactions') }}

),

windowed as (

    -- a card's features look back 30 days, so a card has a row at D only with an event
    -- in those 30 days
    select
        feature_date,
        event_time,
        card_id,
        merchant_id,
        amount,
        amount_cents,
        merchant_country,
        device_id,
        is_foreign,
        is_night,
        is_card_not_present
    from {{ ref('int_windowed_transactions') }}
    where {{ in_window(30) }}

),

first_seen as (

    -- global first event = first event before D for every card with a row at D
    select card_id, min(event_time) as first_seen_at
    from transactions
    group by card_id

),

aggregated as (

    select
        card_id,
        feature_date,
        {{ window_aggregates(aggregates) }},
        max(event_time) as last_seen_at
    from windowed
    group by card_id, feature_date

),

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
