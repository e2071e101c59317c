{{ config(materialized='table') }}

{#-
  The windowed transactions a fraud label was known for before their feature date D: a few
  hundred thousand rows at a million accounts, built once per run (a table, not a view)
  for the account and merchant marts, so the label join scans event_id once, not per mart.
-#}

with

windowed as (

    select feature_date, event_id, event_date, account_id, merchant_id
    from {{ ref('int_windowed_transactions') }}

),

labels as (

    select transaction_id, label_time, is_fraud
    from {{ ref('stg_labels') }}

),

fraud_known as (

    -- when a transaction was first known to be fraud
    select transaction_id, min(label_time) as known_at
    from labels
    where is_fraud
    group by transaction_id

),

final as (

    select
        windowed.feature_date,
        windowed.event_id,
        windowed.event_date,
        windowed.account_id,
        windowed.merchant_id
    from windowed
    inner join fraud_known
        on fraud_known.transaction_id = windowed.event_id
    -- only labels known before D count: a chargeback filed on D or later is not yet known
    where fraud_known.known_at < windowed.feature_date

)

select * from final
