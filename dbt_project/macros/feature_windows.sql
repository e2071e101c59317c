{#- Helpers shared by the feature marts. Every window ends strictly before the feature date. -#}

{% macro nightly_date_range() %}
    {#- (start, end) of the feature dates to build, inclusive, as YYYY-MM-DD strings. -#}
    {%- set nightly = var('nightly_date') or run_started_at.strftime('%Y-%m-%d') -%}
    {%- set start = var('start_date') or nightly -%}
    {%- set end = var('end_date') or nightly -%}
    {{ return((start | string, end | string)) }}
{% endmacro %}

{% macro feature_dates() %}
    {%- set bounds = nightly_date_range() -%}
    select cast(generate_series as date) as feature_date
    from generate_series(
        cast('{{ bounds[0] }}' as date), cast('{{ bounds[1] }}' as date), interval 1 day
    )
{% endmacro %}

{% macro in_window(days, time_column='event_time') %}
    {#- True for events in [feature_date - days, feature_date). -#}
    {{ time_column }} >= feature_date - interval '{{ days }} days'
{% endmacro %}

{% macro days_between(earlier, feature_date='feature_date') %}
    (epoch(cast({{ feature_date }} as timestamp)) - epoch({{ earlier }})) / 86400.0
{% endmacro %}

{#-
  Amount aggregates on integer cents: sums of doubles depend on the order DuckDB's threads
  add them, so a rerun could differ in the last bit. Integer sums are exact, so every
  rerun and every backfill gives bit-identical features (currencies here have ≤ 2 decimals).
-#}
{% macro amount_cents(column='amount') %}
    cast(round({{ column }} * 100) as bigint)
{% endmacro %}

{% macro amount_sum(days) %}
    coalesce(sum(amount_cents) filter (where {{ in_window(days) }}), 0) / 100.0
{% endmacro %}

{% macro amount_mean(days) %}
    coalesce(
        sum(amount_cents) filter (where {{ in_window(days) }})
        / nullif(count(*) filter (where {{ in_window(days) }}), 0) / 100.0,
        0
    )
{% endmacro %}

{% macro amount_std(days) %}
    {#- population standard deviation from exact sums: sqrt(n·Σx² − (Σx)²) / n -#}
    coalesce(
        sqrt(greatest(cast(
            count(*) filter (where {{ in_window(days) }})
                * sum(amount_cents * amount_cents) filter (where {{ in_window(days) }})
            - sum(amount_cents) filter (where {{ in_window(days) }})
                * sum(amount_cents) filter (where {{ in_window(days) }}) as double), 0))
        / nullif(count(*) filter (where {{ in_window(days) }}), 0) / 100.0,
        0
    )
{% endmacro %}
