{#-
  Leakage guard for a feature mart: a row at feature date D may use only events before D.
  Two checks, both failing on a row that used an event on or after D:
  - its recency: the entity was first seen strictly before D and, where the mart has
    `days_since_last`, last seen strictly before D and no earlier than first (for the
    dates this run builds: earlier dates were checked when they were built);
  - for the dates this run builds, its `event_count` (a txn_count over `window_days`)
    recounted from staging, not from the windowed model the mart reads: more events
    than the entity had in the `window_days` before D means some came from D or later.
    Events that land late only raise the recount, so they cannot fail it.
-#}
{% test uses_only_past_events(
    model, entity_key, event_count, window_days,
    days_since_first='days_since_first_seen', days_since_last=none
) %}

{%- set bounds = nightly_date_range() %}

with

features as (

    select
        {{ entity_key }} as entity_key,
        feature_date,
        {{ event_count }} as event_count,
        {{ days_since_first }} as days_since_first,
        {{ days_since_last if days_since_last is not none else 'null' }} as days_since_last
    from {{ model }}
    where feature_date between cast('{{ bounds[0] }}' as date) and cast('{{ bounds[1] }}' as date)

),

transactions as (

    select {{ entity_key }} as entity_key, event_date
    from {{ ref('stg_transactions') }}
    where event_date >= cast('{{ bounds[0] }}' as date) - interval '{{ window_days }} days'
        and event_date < cast('{{ bounds[1] }}' as date)

),

daily as (

    -- feature dates are midnights, so the window before D is whole event dates
    select entity_key, event_date, count(*) as events
    from transactions
    group by entity_key, event_date

),

recounted as (

    select features.entity_key, features.feature_date, coalesce(sum(daily.events), 0) as past_events
    from features
    left join daily
        on daily.entity_key = features.entity_key
        and daily.event_date < features.feature_date
        and daily.event_date >= features.feature_date - interval '{{ window_days }} days'
    group by features.entity_key, features.feature_date

),

final as (

    select
        features.entity_key,
        features.feature_date,
        features.event_count,
        recounted.past_events,
        features.days_since_first,
        features.days_since_last
    from features
    left join recounted
        on recounted.entity_key = features.entity_key
        and recounted.feature_date = features.feature_date
    where features.days_since_first <= 0
        or features.days_since_last <= 0
        or features.days_since_last > features.days_since_first
        or features.event_count > recounted.past_events

)

select * from final

{% endtest %}
