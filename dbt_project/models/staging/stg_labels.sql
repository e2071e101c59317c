with

source as (

    select * from {{ source('lake', 'label') }}

),

renamed as (

    select
        event_id as label_id,
        cast(label_time as timestamp) as label_time,
        transaction_id,
        account_id,
        is_fraud,
        source as label_source,
        fraud_type,
        chargeback_amount

    from source

)

select * from renamed
