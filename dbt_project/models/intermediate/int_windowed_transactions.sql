{#-
  Every transaction paired with each feature date D it can feed: events in [D - 90 days, D),
  90 days being the longest window of any mart. The marts aggregate these rows, so the
  boundary that keeps them free of leakage is written once, here. Which of them were known
  to be fraud before D is int_known_frauds (a label join over every row would cost each
  mart that never reads it the full scan of event_id).
-#}
{%- set lookback_days = 90 %}

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

feature_dates as (

    {{ feature_dates() }}

),

final as (

    select
        feature_dates.feature_date,
        transactions.event_id,
        transactions.event_time,
        transactions.event_date,
        transactions.account_id,
        transactions.card_id,
        transactions.merchant_id,
        transactions.amount,
        {{ amount_cents('transactions.amount') }} as amount_cents,
        transactions.merchant_country,
        transactions.device_id,
        transactions.is_foreign,
        transactions.is_night,
        transactions.is_card_not_present,
        transactions.is_ecommerce
    from feature_dates
    inner join transactions
        on transactions.event_time < feature_dates.feature_date
        and transactions.event_time >= feature_dates.feature_date - interval '{{ lookback_days }} days'

)

select * from final
