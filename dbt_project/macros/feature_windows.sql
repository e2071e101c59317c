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

{% macro in_window(days, time_column='event_time') -%}
    {#- True for events in [feature_date - days, feature_date). -#}
    {{ time_column }} >= feature_date - interval '{{ days }} days'
{%- endmacro %}

{% macro days_between(earlier, feature_date='feature_date') %}
    (epoch(cast({{ feature_date }} as timestamp)) - epoch({{ earlier }})) / 86400.0
{% endmacro %}

{#-
  Amount aggregates on integer cents: sums of doubles depend on the order DuckDB's threads
  add them, so a rerun could differ in the last bit. Integer sums are exact, so every
  rerun and every backfill gives bit-identical features (currencies here have ≤ 2 decimals).
-#}
{% macro amount_cents(column='amount') -%}
    cast(round({{ column }} * 100) as bigint)
{%- endmacro %}

{% macro amount_sum(days) -%}
    coalesce(sum(amount_cents) filter (where {{ in_window(days) }}), 0) / 100.0
{%- endmacro %}

{% macro amount_mean(days) -%}
    coalesce(
        sum(amount_cents) filter (where {{ in_window(days) }})
        / nullif(count(*) filter (where {{ in_window(days) }}), 0) / 100.0,
        0
    )
{%- endmacro %}

{% macro amount_std(days) -%}
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
{%- endmacro %}

{% macro window_measure(measure, days) %}
    {#- One aggregate of the windowed transactions over the `days` before the feature date. -#}
    {%- set only = 'filter (where ' ~ in_window(days) ~ ')' -%}
    {%- set measures = {
        'txn_count': 'count(*) ' ~ only,
        'amount_sum': amount_sum(days),
        'amount_mean': amount_mean(days),
        'amount_std': amount_std(days),
        'amount_max': 'coalesce(max(amount) ' ~ only ~ ', 0)',
        'distinct_accounts': 'count(distinct account_id) ' ~ only,
        'distinct_cards': 'count(distinct card_id) ' ~ only,
        'distinct_merchants': 'count(distinct merchant_id) ' ~ only,
        'distinct_countries': 'count(distinct merchant_country) ' ~ only,
        'distinct_devices': 'count(distinct device_id) ' ~ only,
        'active_days': 'count(distinct event_date) ' ~ only,
        'night_ratio': 'coalesce(avg(is_night::double) ' ~ only ~ ', 0)',
        'foreign_ratio': 'coalesce(avg(is_foreign::double) ' ~ only ~ ', 0)',
        'cnp_ratio': 'coalesce(avg(is_card_not_present::double) ' ~ only ~ ', 0)',
        'ecommerce_ratio': 'coalesce(avg(is_ecommerce::double) ' ~ only ~ ', 0)',
        'fraud_labels': 'count(*) filter (where is_known_fraud and ' ~ in_window(days) ~ ')',
    } -%}
    {%- if measure not in measures -%}
        {{ exceptions.raise_compiler_error(
            "unknown window measure '" ~ measure ~ "'; known: " ~ (measures.keys() | sort | join(', '))
        ) }}
    {%- endif -%}
    {{ return(measures[measure]) }}
{% endmacro %}

{% macro window_aggregates(aggregates, columns_of=none) %}
    {#-
      The window features of a mart, named <measure>_<days>d. `aggregates` is a list of
      (windows, measures) pairs, each pair window-major: for every window, every measure.
      Without `columns_of`: the aggregate expressions, for the group-by CTE. With it: the
      same names as columns of that CTE, for `final`. One list, so the two cannot drift.
    -#}
    {%- set items = [] -%}
    {%- for windows, measures in aggregates -%}
        {%- for days in windows -%}
            {%- for measure in measures -%}
                {%- set name = measure ~ '_' ~ days ~ 'd' -%}
                {%- if columns_of is none -%}
                    {%- do items.append(window_measure(measure, days) ~ ' as ' ~ name) -%}
                {%- else -%}
                    {%- do items.append(columns_of ~ '.' ~ name) -%}
                {%- endif -%}
            {%- endfor -%}
        {%- endfor -%}
    {%- endfor -%}
    {{ items | join(',\n        ') }}
{%- endmacro %}
