-- Leakage guard: every merchant's last event lies strictly before the feature date, and its
-- first event is no later than its last. A row failing here used an event on or after D.
with

features as (

    select merchant_id, feature_date, days_since_first_seen
    from {{ ref('merchant_features') }}

),

final as (

    select *
    from features
    where days_since_first_seen <= 0

)

select * from final
