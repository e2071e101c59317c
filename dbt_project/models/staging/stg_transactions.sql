with

source as (

    select * from {{ source('lake', 'transaction') }}

),

renamed as (

    select
        event_id,
        -- where the row is in the lake: the entity states (macros/entity_state.sql)
        -- read only the files they have not merged yet
        filename as lake_file,
        source.event_date as lake_date,
        -- The UTC wall clock, from epoch microseconds: the same as a cast under the
        -- session's UTC time zone, but plain arithmetic (a cast goes through ICU per row:
        -- 4x slower, and every mart reads this view several times).
        make_timestamp(epoch_us(event_time)) as event_time,
        cast(make_timestamp(epoch_us(event_time)) as date) as event_date,
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
        hour(make_timestamp(epoch_us(event_time))) < 6 as is_night,
        not card_present as is_card_not_present,
        channel = 'ecommerce' as is_ecommerce

    from source

)

select * from renamed
