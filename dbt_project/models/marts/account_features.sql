{{ config(unique_key=['account_id', 'feature_date']) }}

{%- set windows = [1, 7, 30, 90] %}

with

transactions as (

    select
        event_id,
        event_time,
        event_date,
        account_id,
        card_id,
        merchant_id,
        amount,
        merchant_country,
        device_id,
        is_foreign,
        is_night,
        is_card_not_present,
        is_ecommerce
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

    -- the global first event is also the first event before D for every account that
    -- has a row at D (it had an event before D), so this cannot leak
    select account_id, min(event_time) as first_seen_at
    from transactions
    group by account_id

),

fraud_known as (

    select transaction_id, min(label_time) as known_at
    from labels
    where is_fraud
    group by transaction_id

),

windowed as (

    -- each event paired with every feature date it feeds: strictly before D, at most 90 days
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

aggregated as (

    select
        account_id,
        feature_date,
        {%- for w in windows %}
        count(*) filter (where {{ in_window(w) }}) as txn_count_{{ w }}d,
        {{ amount_sum(w) }} as amount_sum_{{ w }}d,
        {{ amount_mean(w) }} as amount_mean_{{ w }}d,
        {{ amount_std(w) }} as amount_std_{{ w }}d,
        coalesce(max(amount) filter (where {{ in_window(w) }}), 0) as amount_max_{{ w }}d,
        count(distinct merchant_id) filter (where {{ in_window(w) }}) as distinct_merchants_{{ w }}d,
        count(distinct merchant_country) filter (where {{ in_window(w) }}) as distinct_countries_{{ w }}d,
        count(distinct device_id) filter (where {{ in_window(w) }}) as distinct_devices_{{ w }}d,
        coalesce(avg(is_night::double) filter (where {{ in_window(w) }}), 0) as night_ratio_{{ w }}d,
        coalesce(avg(is_foreign::double) filter (where {{ in_window(w) }}), 0) as foreign_ratio_{{ w }}d,
        coalesce(avg(is_card_not_present::double) filter (where {{ in_window(w) }}), 0) as cnp_ratio_{{ w }}d,
        coalesce(avg(is_ecommerce::double) filter (where {{ in_window(w) }}), 0) as ecommerce_ratio_{{ w }}d,
        {%- endfor %}
        count(distinct card_id) filter (where {{ in_window(30) }}) as distinct_cards_30d,
        count(distinct card_id) as distinct_cards_90d,
        count(distinct event_date) filter (where {{ in_window(7) }}) as active_days_7d,
        count(distinct event_date) filter (where {{ in_window(30) }}) as active_days_30d,
        count(distinct event_date) as active_days_90d,
        count(*) filter (where is_known_fraud) as fraud_labels_90d,
        max(event_time) as last_seen_at
    from windowed
    group by account_id, feature_date

),

final as (

    select
        aggregated.account_id,
        aggregated.feature_date,
        {%- for w in windows %}
        aggregated.txn_count_{{ w }}d,
        aggregated.amount_sum_{{ w }}d,
        aggregated.amount_mean_{{ w }}d,
        aggregated.amount_std_{{ w }}d,
        aggregated.amount_max_{{ w }}d,
        aggregated.distinct_merchants_{{ w }}d,
        aggregated.distinct_countries_{{ w }}d,
        aggregated.distinct_devices_{{ w }}d,
        aggregated.night_ratio_{{ w }}d,
        aggregated.foreign_ratio_{{ w }}d,
        aggregated.cnp_ratio_{{ w }}d,
        aggregated.ecommerce_ratio_{{ w }}d,
        {%- endfor %}
        aggregated.distinct_cards_30d,
        aggregated.distinct_cards_90d,
        aggregated.active_days_7d,
        aggregated.active_days_30d,
        aggregated.active_days_90d,
        aggregated.fraud_labels_90d,
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
