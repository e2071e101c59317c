-- Leakage guard: every card's last event lies strictly before the feature date, and its
-- first event is no later than its last. A row failing here used an event on or after D.
with

features as (

    select card_id, feature_date, days_since_first_seen, days_since_last_txn
    from {{ ref('card_features') }}

),

final as (

    select *
    from features
    where days_since_first_seen <= 0
        or days_since_last_txn <= 0
        or days_since_last_txn > days_since_first_seen

)

select * from final
