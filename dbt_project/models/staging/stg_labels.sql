with

source as (

    select * from {{ source('lake', 'label') }}

),

renamed as (

    select
        event_id as label_id,
        make_timestamp(epoch_us(label_time)) as label_time,  -- UTC wall clock, as stg_transactions
        transaction_id,
        account_id,
        is_fraud,
        source as label_source,
        fraud_type,
        chargeback_amount

    from source

)

select * from renamed
