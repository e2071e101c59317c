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

{% macro built_dates(column='feature_date') -%}
    {#- True for the feature dates this run builds (the marts' guard against a view built
        with another run's vars). -#}
    {%- set bounds = nightly_date_range() -%}
    {{ column }} between cast('{{ bounds[0] }}' as date) and cast('{{ bounds[1] }}' as date)
{%- endmacro %}

{% macro in_window(days, time_column='event_time') -%}
    {#- True for events in [feature_date - days, feature_date). -#}
    {{ time_column }} >= feature_date - interval '{{ days }} days'
{%- endmacro %}

{% macro days_between(earlier, feature_date='feature_date') %}
    (epoch(cast({{ feature_date }} as timestamp)) - epoch({{ earlier }})) / 86400.0
{% endmacro %}

{#-
  Window features in two cheap steps instead of one filtered aggregate per feature and
  window (DuckDB plans each `count(distinct …) filter (…)` as a hash aggregate of its
  own: ~50 aggregates over every windowed row made the account mart 10× slower than its
  inputs take to read).

  1. `<prefix>_buckets`: one row per entity, feature date and bucket, the bucket being the
     smallest window holding the event (windows nest, and every window ends at D and
     starts at a midnight, so `event_time >= D - w days` is `D - event_date <= w`):
     counts, integer-cent sums, maxima, flag counts, the last event and a bit per day.
  2. `distinct_counts` (int_<entity>_distinct, a model of its own): one row per entity and
     distinct value (merchant, device …) with its most recent day; a value is in window
     w when that day is.
  `window_features` then gives every requested `<measure>_<w>d` with the type and the
  exact value of the one-step filtered aggregate: integer sums are exact in any order, a
  ratio is the same integer count over the same integer count, a distinct count counts
  the same values. The unit tests, and every mart compared bit for bit with the one-step
  SQL on a 100,000-account lake, show it.

  Amount aggregates are on integer cents: sums of doubles depend on the order DuckDB's
  threads add them, so a rerun could differ in the last bit. Integer sums are exact, so
  every rerun and every backfill gives bit-identical features (currencies here have
  ≤ 2 decimals).
-#}
{% macro amount_cents(column='amount') -%}
    cast(round({{ column }} * 100) as bigint)
{%- endmacro %}

{% macro _window_plan(aggregates) %}
    {#- {'windows': sorted windows, 'distinct': {measure: [windows]}, 'measures': [...]} -#}
    {%- set distinct_columns = {
        'distinct_accounts': 'account_id',
        'distinct_cards': 'card_id',
        'distinct_merchants': 'merchant_id',
        'distinct_countries': 'merchant_country',
        'distinct_devices': 'device_id',
    } -%}
    {%- set known = ['txn_count', 'amount_sum', 'amount_mean', 'amount_std', 'amount_max',
        'night_ratio', 'foreign_ratio', 'cnp_ratio', 'ecommerce_ratio', 'fraud_labels',
        'active_days'] + (distinct_columns.keys() | list) -%}
    {%- set windows = [] -%}
    {%- set distinct = {} -%}
    {%- set measures = [] -%}
    {%- for windows_of, names in aggregates -%}
        {%- for days in windows_of -%}
            {%- if days not in windows -%}{%- do windows.append(days) -%}{%- endif -%}
            {%- for measure in names -%}
                {%- if measure not in known -%}
                    {{ exceptions.raise_compiler_error(
                        "unknown window measure '" ~ measure ~ "'; known: " ~ (known | sort | join(', '))
                    ) }}
                {%- endif -%}
                {%- if measure == 'active_days' and days > 126 -%}
                    {{ exceptions.raise_compiler_error("active_days windows hold at most 126 days") }}
                {%- endif -%}
                {%- do measures.append((measure, days)) -%}
                {%- if measure in distinct_columns -%}
                    {%- do distinct.setdefault(measure, []).append(days) -%}
                {%- endif -%}
            {%- endfor -%}
        {%- endfor -%}
    {%- endfor -%}
    {{ return({'windows': windows | sort, 'distinct': distinct, 'columns': distinct_columns,
               'measures': measures}) }}
{% endmacro %}

{% macro _in_buckets(days) -%}
    filter (where bucket <= {{ days }})
{%- endmacro %}

{% macro _bucket_measure(measure, days) %}
    {#- One window feature from the bucket rows, typed as its one-step aggregate. -#}
    {%- set only = _in_buckets(days) -%}
    {%- set count = 'cast(coalesce(sum(txn_count) ' ~ only ~ ', 0) as bigint)' -%}
    {%- set cents = 'sum(cents) ' ~ only -%}
    {%- set ratio = 'coalesce(cast(sum({}) ' ~ only ~ ' as double) / nullif(' ~ count ~ ', 0), 0)' -%}
    {%- set measures = {
        'txn_count': count,
        'amount_sum': 'coalesce(' ~ cents ~ ', 0) / 100.0',
        'amount_mean': 'coalesce(' ~ cents ~ ' / nullif(' ~ count ~ ', 0) / 100.0, 0)',
        'amount_std': 'coalesce(sqrt(greatest(cast(' ~ count ~ ' * sum(cents_squared) ' ~ only
            ~ ' - ' ~ cents ~ ' * ' ~ cents ~ ' as double), 0)) / nullif(' ~ count ~ ', 0) / 100.0, 0)',
        'amount_max': 'coalesce(max(amount_max) ' ~ only ~ ', 0)',
        'night_ratio': ratio.format('night_count'),
        'foreign_ratio': ratio.format('foreign_count'),
        'cnp_ratio': ratio.format('cnp_count'),
        'ecommerce_ratio': ratio.format('ecommerce_count'),
        'active_days': 'cast(bit_count(bit_or(day_bits) & ((1::hugeint << ' ~ (days + 1)
            ~ ') - 2)) as bigint)',
    } -%}
    {{ return(measures[measure]) }}
{% endmacro %}

{% macro _bucket(windows) -%}
    case
        {%- for days in windows %}
        when feature_date - event_date <= {{ days }} then {{ days }}
        {%- endfor %}
    end
{%- endmacro %}

{% macro window_features(relation, entity_key, aggregates, frauds=none, distinct=none, prefix='aggregated', daily=false) %}
    {#-
      CTEs computing a mart's window features, ending in `<prefix>`: entity_key,
      feature_date, every `<measure>_<days>d` of `aggregates` (the list
      `window_aggregates` names the columns from) and last_seen_at. `relation` holds the
      windowed transactions (feature_date, event_time, event_date and the measured
      columns); `frauds` the known frauds among them (int_known_frauds), for fraud_labels;
      `distinct` the mart's distinct counts (`distinct_counts`, built as a model of its
      own: in one query with the rest, DuckDB holds every hash table at once and runs out
      of memory at a million accounts). With `daily`, `relation` holds a daily state's rows
      instead (macros/entity_state.sql: feature_date, event_date and the day's sums),
      which the buckets add up to the same values. Emitted as `name as (…)` items for the
      mart's own `with` list; `<prefix>_buckets` and `<prefix>_fraud_buckets` stay
      available.
    -#}
    {%- set plan = _window_plan(aggregates) -%}
    {%- set wanted = plan.measures | map(attribute=0) | list -%}
    {%- set flags = [('is_night', 'night'), ('is_foreign', 'foreign'),
                     ('is_card_not_present', 'cnp'), ('is_ecommerce', 'ecommerce')] -%}
    {%- if 'fraud_labels' in wanted and frauds is none -%}
        {{ exceptions.raise_compiler_error("fraud_labels needs the known frauds: window_features(..., frauds=...)") }}
    {%- endif -%}
    {%- if plan.distinct and distinct is none -%}
        {{ exceptions.raise_compiler_error("distinct measures need their counts: window_features(..., distinct=...)") }}
    {%- endif -%}
{{ prefix }}_buckets as (

    select
        {{ entity_key }},
        feature_date,
        {{ _bucket(plan.windows) }} as bucket,
        {%- if daily %}
        sum(txn_count) as txn_count,
        sum(cents) as cents,
        sum(cents_squared) as cents_squared,
        max(amount_max) as amount_max,
        {%- else %}
        count(*) as txn_count,
        sum(amount_cents) as cents,
        sum(amount_cents * amount_cents) as cents_squared,
        max(amount) as amount_max,
        {%- endif %}
        {%- for flag, name in flags %}
        {%- if name ~ '_ratio' in wanted %}
        {%- if daily %}
        sum({{ name }}_count) as {{ name }}_count,
        {%- else %}
        count(*) filter (where {{ flag }}) as {{ name }}_count,
        {%- endif %}
        {%- endif %}
        {%- endfor %}
        {%- if 'active_days' in wanted %}
        bit_or(1::hugeint << (feature_date - event_date)) as day_bits,
        {%- endif %}
        {%- if daily %}
        max(last_seen_at) as last_seen_at
        {%- else %}
        max(event_time) as last_seen_at
        {%- endif %}
    from {{ relation }}
    group by all

),
{%- if frauds is not none %}

{{ prefix }}_fraud_buckets as (

    select {{ entity_key }}, feature_date, {{ _bucket(plan.windows) }} as bucket, count(*) as fraud_count
    from {{ frauds }}
    group by all

),
{%- endif %}
{%- if plan.distinct %}

{{ prefix }}_distinct as (

    select * from {{ distinct }}

),
{%- endif %}
{%- if 'fraud_labels' in wanted %}

{{ prefix }}_frauds as (

    select
        {{ entity_key }},
        feature_date
        {%- for measure, days in plan.measures if measure == 'fraud_labels' %},
        cast(coalesce(sum(fraud_count) {{ _in_buckets(days) }}, 0) as bigint) as fraud_labels_{{ days }}d
        {%- endfor %}
    from {{ prefix }}_fraud_buckets
    group by {{ entity_key }}, feature_date

),
{%- endif %}

{{ prefix }}_windows as (

    select
        {{ entity_key }},
        feature_date,
        {%- for measure, days in plan.measures if measure not in plan.distinct and measure != 'fraud_labels' %}
        {{ _bucket_measure(measure, days) }} as {{ measure }}_{{ days }}d,
        {%- endfor %}
        max(last_seen_at) as last_seen_at
    from {{ prefix }}_buckets
    group by {{ entity_key }}, feature_date

),

{{ prefix }} as (

    select
        {{ prefix }}_windows.{{ entity_key }},
        {{ prefix }}_windows.feature_date,
        {%- for measure, days in plan.measures %}
        {%- if measure in plan.distinct %}
        coalesce({{ prefix }}_distinct.{{ measure }}_{{ days }}d, 0) as {{ measure }}_{{ days }}d,
        {%- elif measure == 'fraud_labels' %}
        coalesce({{ prefix }}_frauds.fraud_labels_{{ days }}d, 0) as fraud_labels_{{ days }}d,
        {%- else %}
        {{ prefix }}_windows.{{ measure }}_{{ days }}d,
        {%- endif %}
        {%- endfor %}
        {{ prefix }}_windows.last_seen_at
    from {{ prefix }}_windows
    {%- for measure in (['distinct'] if plan.distinct else []) + (['frauds'] if 'fraud_labels' in wanted else []) %}
    left join {{ prefix }}_{{ measure }}
        on {{ prefix }}_{{ measure }}.{{ entity_key }} = {{ prefix }}_windows.{{ entity_key }}
        and {{ prefix }}_{{ measure }}.feature_date = {{ prefix }}_windows.feature_date
    {%- endfor %}

)
{%- endmacro %}

{% macro distinct_counts(relation, entity_key, aggregates, prefix='counted') %}
    {#-
      CTEs counting a mart's distinct measures (distinct_merchants, … of `aggregates`)
      from `relation` (windowed transactions), ending in `<prefix>`: entity_key,
      feature_date and every `distinct_<x>_<days>d`. Each distinct value is kept once per
      entity with the most recent day it was seen before D; it is in window w when that
      day is (the same values count(distinct …) filter (…) counts).
    -#}
    {%- set plan = _window_plan(aggregates) -%}
{%- for measure, windows in plan.distinct.items() %}

{{ prefix }}_{{ measure }} as (

    -- each distinct value once, with the most recent day it was seen before D
    select
        {{ entity_key }},
        feature_date
        {%- for days in windows %},
        count(*) filter (where nearest <= {{ days }}) as {{ measure }}_{{ days }}d
        {%- endfor %}
    from (
        select {{ entity_key }}, feature_date, min(feature_date - event_date) as nearest
        from {{ relation }}
        where {{ plan.columns[measure] }} is not null
        group by {{ entity_key }}, feature_date, {{ plan.columns[measure] }}
    )
    group by {{ entity_key }}, feature_date

),
{%- endfor %}

{{ prefix }} as (

    -- one row per entity and feature date: each measure's columns from its own CTE
    select
        {{ entity_key }},
        feature_date
        {%- for measure, windows in plan.distinct.items() %}
        {%- for days in windows %},
        coalesce(max({{ measure }}_{{ days }}d), 0) as {{ measure }}_{{ days }}d
        {%- endfor %}
        {%- endfor %}
    from (
        {%- for measure in plan.distinct %}
        select * from {{ prefix }}_{{ measure }}
        {%- if not loop.last %}
        union all by name
        {%- endif %}
        {%- endfor %}
    )
    group by {{ entity_key }}, feature_date

)
{%- endmacro %}

{% macro window_aggregates(aggregates, columns_of) %}
    {#-
      The window features of a mart as columns of the CTE `columns_of`, named
      <measure>_<days>d: for every (windows, measures) pair, window-major: for every
      window, every measure. The same list `window_features` computes them from.
    -#}
    {%- set items = [] -%}
    {%- for windows, measures in aggregates -%}
        {%- for days in windows -%}
            {%- for measure in measures -%}
                {%- do items.append(columns_of ~ '.' ~ measure ~ '_' ~ days ~ 'd') -%}
            {%- endfor -%}
        {%- endfor -%}
    {%- endfor -%}
    {{ items | join(',\n        ') }}
{%- endmacro %}
