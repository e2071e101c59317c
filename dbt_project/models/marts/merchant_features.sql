{{ config(unique_key=['merchant_id', 'feature_date']) }}

{%- set windows = [7, 30, 90] %}
{%- set prior_weight = var('merchant_fraud_prior_weight') %}

with

transactions as (

    select
        event_id,
        event_time,
        account_id,
        merchant_id,
        amount,
        is_foreign,
        is_card_not_present
    from {{ ref('stg_transactions') }}

),

labels as (

    select transaction_id, label_time, is_fraud
    from {{ ref('stg_labels') }}

),

feature_dates as (

    {{ feature_dates() }}

),

first_seen as (

    select merchant_id, min(event_time) as first_seen_at
    from transactions
    group by merchant_id

),

fraud_known as (

    select transaction_id, min(label_time) as known_at
    from labels
    where is_fraud
    group by transaction_id

),

windowed as (

    -- only labels known before D count: a chargeback filed on D or later is not yet known
    select
        feature_dates.feature_date,
        transactions.*,
        {{ amount_cents('transactions.amount') }} as amount_cents,
        coalesce(fraud_known.known_at < feature_dates.feature_date, false) as is_known_fraud
    from feature_dates
    inner join transactions
        on transactions.event_time < feature_dates.feature_date
        and transactions.event_time >= feature_dates.feature_date - interval '90 days'
    left join fraud_known
        on fraud_known.transaction_id = transactions.event_id

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
        {%- for w in windows %}
        count(*) filter (where {{ in_window(w) }}) as txn_count_{{ w }}d,
        {{ amount_sum(w) }} as amount_sum_{{ w }}d,
        {{ amount_mean(w) }} as amount_mean_{{ w }}d,
        {{ amount_std(w) }} as amount_std_{{ w }}d,
        coalesce(max(amount) filter (where {{ in_window(w) }}), 0) as amount_max_{{ w }}d,
        count(distinct account_id) filter (where {{ in_window(w) }}) as distinct_accounts_{{ w }}d,
        coalesce(avg(is_foreign::double) filter (where {{ in_window(w) }}), 0) as foreign_ratio_{{ w }}d,
        coalesce(avg(is_card_not_present::double) filter (where {{ in_window(w) }}), 0) as cnp_ratio_{{ w }}d,
        {%- endfor %}
        count(*) filter (where is_known_fraud and {{ in_window(30) }}) as fraud_labels_30d,
        count(*) filter (where is_known_fraud) as fraud_labels_90d
    from windowed
    group by merchant_id, feature_date

),

final as (

    select
        aggregated.merchant_id,
        aggregated.feature_date,
        {%- for w in windows %}
        aggregated.txn_count_{{ w }}d,
        aggregated.amount_sum_{{ w }}d,
        aggregated.amount_mean_{{ w }}d,
        aggregated.amount_std_{{ w }}d,
        aggregated.amount_max_{{ w }}d,
        aggregated.distinct_accounts_{{ w }}d,
        aggregated.foreign_ratio_{{ w }}d,
        aggregated.cnp_ratio_{{ w }}d,
        {%- endfor %}
        aggregated.fraud_labels_30d,
        aggregated.fraud_labels_90d,
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
