{#- The delete reads only the dates this run builds, not every night the mart holds. -#}
{{ config(
    unique_key=['merchant_id', 'feature_date'],
    incremental_predicates=[built_dates('DBT_INCREMENTAL_TARGET.feature_date')],
) }}

{%- set aggregates = mart_aggregates('merchant') %}
{#- One-date runs add up the daily state, others the windowed events (macros/entity_state.sql). -#}
{%- set daily = entity_state_enabled() %}
-- depends_on: {{ ref('int_merchant_daily') }}
-- depends_on: {{ ref('int_windowed_transactions') }}
{%- set prior_weight = var('merchant_fraud_prior_weight') %}

with

transactions as (

    select merchant_id, event_time
    from {{ ref('stg_transactions') }}

),

windowed as not materialized (
{%- if daily %}

    {{ daily_windowed(ref('int_merchant_daily'), 'merchant_id', 90) }}
{%- else %}

    select
        feature_date,
        event_time,
        event_date,
        merchant_id,
        amount,
        amount_cents,
        is_foreign,
        is_card_not_present
    from {{ ref('int_windowed_transactions') }}
    where {{ built_dates() }}

{%- endif %}

),

first_seen as (
{%- if daily %}

    {{ daily_first_seen(ref('int_merchant_daily'), 'merchant_id') }}
{%- else %}

    select merchant_id, min(event_time) as first_seen_at
    from transactions
    group by merchant_id

{%- endif %}

),

known_frauds as (

    select feature_date, event_date, merchant_id
    from {{ ref('int_known_frauds') }}
    where {{ built_dates() }}

),

distinct_values as (

    select * from {{ ref('int_merchant_distinct') }}
    where {{ built_dates() }}

),

{{ window_features('windowed', 'merchant_id', aggregates, daily=daily, frauds='known_frauds', distinct='distinct_values') }},

global_counts as (

    -- every merchant's transactions and known frauds, per feature date and bucket
    select feature_date, bucket, sum(txn_count) as txn_count, 0 as fraud_count
    from aggregated_buckets
    group by feature_date, bucket
    union all
    select feature_date, bucket, 0 as txn_count, sum(fraud_count) as fraud_count
    from aggregated_fraud_buckets
    group by feature_date, bucket

),

global_rate as (

    -- the prior every merchant's rate shrinks towards: all merchants, same windows (known
    -- frauds over transactions, as avg(is_known_fraud) over every windowed row, exactly)
    select
        feature_date,
        {%- for w in [30, 90] %}
        coalesce(
            cast(coalesce(sum(fraud_count) filter (where bucket <= {{ w }}), 0) as double)
                / nullif(sum(txn_count) filter (where bucket <= {{ w }}), 0),
            0
        ) as fraud_rate_prior_{{ w }}d{{ "," if not loop.last }}
        {%- endfor %}
    from global_counts
    group by feature_date

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
