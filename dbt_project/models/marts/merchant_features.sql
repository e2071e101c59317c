{{ config(unique_key=['merchant_id', 'feature_date']) }}

{%- set aggregates = [
    ([7, 30, 90], [
        'txn_count', 'amount_sum', 'amount_mean', 'amount_std', 'amount_max',
        'distinct_accounts', 'foreign_ratio', 'cnp_ratio',
    ]),
    ([30, 90], ['fraud_labels']),
] %}
{%- set prior_weight = var('merchant_fraud_prior_weight') %}

with

transactions as (

    select merchant_id, event_time
    from {{ ref('stg_transactions') }}

),

windowed as (

    select
        feature_date,
        event_time,
        account_id,
        merchant_id,
        amount,
        amount_cents,
        is_foreign,
        is_card_not_present,
        is_known_fraud
    from {{ ref('int_windowed_transactions') }}

),

first_seen as (

    select merchant_id, min(event_time) as first_seen_at
    from transactions
    group by merchant_id

),

global_rate as (

    -- the prior every merchant's rate shrinks towards: all merchants, same windows
    select
        feature_date,
        {%- for w in [30, 90] %}
        coalesce(avg(is_known_fraud::double) filter (where {{ in_window(w) }}), 0)
            as fraud_rate_prior_{{ w }}d{{ "," if not loop.last }}
        {%- endfor %}
    from windowed
    group by feature_date

),

aggregated as (

    select
        merchant_id,
        feature_date,
        {{ window_aggregates(aggregates) }}
    from windowed
    group by merchant_id, feature_date

),

final as (

    select
        aggregated.merchant_id,
        aggregated.feature_date,
        {{ window_aggregates(aggregates, columns_of='aggregated') }},
        {%- for w in [30, 90] %}
        (aggregated.fraud_labels_{{ w }}d + {{ prior_weight }} * global_rate.fraud_rate_prior_{{ w }}d)
            / (aggregated.txn_count_{{ w }}d + {{ prior_weight }}) as fraud_rate_smoothed_{{ w }}d,
        {%- endfor %}
        {{ days_between('first_seen.first_seen_at', 'aggregated.feature_date') }} as days_since_first_seen
    from aggregated
    inner join first_seen
        on first_seen.merchant_id = aggregated.merchant_id
    inner join global_rate
        on global_rate.feature_date = aggregated.feature_date

)

select * from final
