with

source as (

    select * from {{ source('lake', 'transaction') }}

),

renamed as (

    select
        event_id,
        -- the session time zone is UTC, so this is the UTC wall clock
        cast(event_time as timestamp) as event_time,
        cast(cast(event_time as timestamp) as date) as event_date,
        account_id,
        card_id,
        merchant_id,
        cast(amount as double) as amount,
        currency,
        mcc,
        merchant_country,
        card_country,
        channel,
        entry_mode,
        device_id,
        is_3ds,
        card_present,
        merchant_country <> card_country as is_foreign,
        hour(cast(event_time as timestamp)) < 6 as is_night,
        not card_present as is_card_not_present,
        channel = 'ecommerce' as is_ecommerce

    from source

)

select * from renamed
