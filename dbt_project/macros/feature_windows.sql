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
