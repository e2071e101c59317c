{{ config(unique_key=['card_id', 'feature_date']) }}

{%- set windows = [1, 7, 30] %}

with

transactions as (

    select
        event_id,
        event_time,
        card_id,
        merchant_id,
        amount,
        merchant_country,
        device_id,
        is_foreign,
        is_night,
        is_card_not_present
    from {{ ref('stg_transactions') }}

),

feature_dates as (

    {{ feature_dates() }}

),

first_seen as (

    -- global first event = first event before D for every card with a row at D
    select card_id, min(event_time) as first_seen_at
    from transactions
    group by card_id

),

windowed as (

    -- a card's features look back 30 days, strictly before D
    select
        feature_dates.feature_date,
        transactions.*,
        {{ amount_cents('transactions.amount') }} as amount_cents
    from feature_dates
    inner join transactions
        on transactions.event_time < feature_dates.feature_date
        and transactions.event_time >= feature_dates.feature_date - interval '30 days'

),

aggregated as (

    select
        card_id,
        feature_date,
        {%- for w in windows %}
        count(*) filter (where {{ in_window(w) }}) as txn_count_{{ w }}d,
        {{ amount_sum(w) }} as amount_sum_{{ w }}d,
        {{ amount_mean(w) }} as amount_mean_{{ w }}d,
        {{ amount_std(w) }} as amount_std_{{ w }}d,
        coalesce(max(amount) filter (where {{ in_window(w) }}), 0) as amount_max_{{ w }}d,
        count(distinct merchant_id) filter (where {{ in_window(w) }}) as distinct_merchants_{{ w }}d,
        count(distinct merchant_country) filter (where {{ in_window(w) }}) as distinct_countries_{{ w }}d,
        coalesce(avg(is_night::double) filter (where {{ in_window(w) }}), 0) as night_ratio_{{ w }}d,
        coalesce(avg(is_foreign::double) filter (where {{ in_window(w) }}), 0) as foreign_ratio_{{ w }}d,
        coalesce(avg(is_card_not_present::double) filter (where {{ in_window(w) }}), 0) as cnp_ratio_{{ w }}d,
        {%- endfor %}
        count(distinct device_id) as distinct_devices_30d,
        max(event_time) as last_seen_at
    from windowed
    group by card_id, feature_date

),

final as (

    select
        aggregated.card_id,
        aggregated.feature_date,
        {%- for w in windows %}
        aggregated.txn_count_{{ w }}d,
        aggregated.amount_sum_{{ w }}d,
        aggregated.amount_mean_{{ w }}d,
        aggregated.amount_std_{{ w }}d,
        aggregated.amount_max_{{ w }}d,
        aggregated.distinct_merchants_{{ w }}d,
        aggregated.distinct_countries_{{ w }}d,
        aggregated.night_ratio_{{ w }}d,
        aggregated.foreign_ratio_{{ w }}d,
        aggregated.cnp_ratio_{{ w }}d,
        {%- endfor %}
        aggregated.distinct_devices_30d,
        {{ days_between('first_seen.first_seen_at', 'aggregated.feature_date') }} as days_since_first_seen,
        {{ days_between('aggregated.last_seen_at', 'aggregated.feature_date') }} as days_since_last_txn,
        coalesce(aggregated.txn_count_1d / nullif(aggregated.txn_count_30d / 30.0, 0), 0)
            as velocity_count_1d_vs_30d
    from aggregated
    inner join first_seen
        on first_seen.card_id = aggregated.card_id

)

select * from final
