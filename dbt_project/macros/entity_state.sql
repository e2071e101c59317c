{#-
  Entity state: what a nightly run keeps for the next one, so that a one-date run reads
  only the lake files that are new since the last run instead of 90 days of events.

  A state model (int_<entity>_seen) holds, per entity and distinct value (merchant,
  country, device, card …), the most recent day the pair was seen before the state's
  date D. Its ledger (`<model>__ledger`: lake_file, lake_date, as_of) lists the lake
  files merged, all from partitions before D. A run for D:

  1. snapshots the lake's files of partitions before D (`<model>__next`);
  2. merges the files the ledger lacks (late events into old partitions included): the
     merged day of a pair is the later of the two, so merging a file twice changes
     nothing, and a run that fails part way is repeated by the next one;
  3. drops pairs older than the longest window, then records the snapshot as the ledger.

  The lake only adds events (streams/lake/writer.py: a rewritten batch keeps its file
  name and rows). When a file the ledger lists is gone, or D is before the ledger's date
  (a rerun of an earlier night), the state is rebuilt from every file before D: a
  merged day cannot be taken back. Runs over a range of dates (backfills) and runs with
  `entity_state: false` read the windowed events as before and leave the state alone.
  Either way the marts are the same, bit for bit (tests/integration/test_entity_state.py).
-#}

{% macro entity_state_enabled() -%}
    {%- set bounds = nightly_date_range() -%}
    {{ return(var('entity_state', true) and bounds[0] == bounds[1]) }}
{%- endmacro %}

{% macro lake_dir() -%}
    {{- env_var('STREAMSCORE_LAKE_DIR', env_var('STREAMSCORE_HOME', '.streamscore') ~ '/lake') -}}
{%- endmacro %}

{% macro _state_table(suffix) -%}
    {{ this.database }}.{{ this.schema }}.{{ this.identifier ~ '__' ~ suffix }}
{%- endmacro %}

{% macro entity_state_plan(window_days=none, by_partition=false) %}
    {#-
      At execution: snapshot the lake's transaction files before D, compare them with the
      ledger and return {'mode': 'merge' | 'rebuild' | 'off', 'dates': [...],
      'by_partition': ...}: the partitions to read (only those a window of
      `window_days` reaches, when given). `by_partition`: a partition with a new file is
      read whole (the daily states replace a partition's rows). 'off' outside one-date
      runs (and at parse time).
    -#}
    {%- if not execute or not entity_state_enabled() -%}
        {{ return({'mode': 'off', 'dates': [], 'by_partition': by_partition}) }}
    {%- endif -%}
    {%- set day = nightly_date_range()[0] -%}
    {%- set pattern = lake_dir() ~ '/transaction/*/*.parquet' -%}
    {%- do run_query(
        "create or replace table " ~ _state_table('next') ~ " as "
        ~ "select lake_file, lake_date from ("
        ~ " select file as lake_file,"
        ~ " cast(regexp_extract(file, 'event_date=([0-9]{4}-[0-9]{2}-[0-9]{2})', 1) as date) as lake_date"
        ~ " from glob('" ~ pattern ~ "')"
        ~ ") where lake_date < date '" ~ day ~ "'"
    ) -%}
    {%- set mode = entity_state_mode() -%}
    {%- set dirty = "select lake_file, lake_date from " ~ _state_table('next') -%}
    {%- if mode == 'merge' -%}
        {%- set dirty = dirty ~ " anti join " ~ _state_table('ledger') ~ " using (lake_file)" -%}
    {%- endif -%}
    {%- if window_days is not none -%}
        {#- a day's margin: the partition is the UTC event date, as stg's event_date -#}
        {%- set dirty = dirty ~ " where lake_date >= date '" ~ day ~ "' - " ~ (window_days + 1) -%}
    {%- endif -%}
    {%- set dates = run_query("select distinct cast(lake_date as varchar) from (" ~ dirty ~ ") order by 1").columns[0].values() | list -%}
    {{ log(this.identifier ~ ': ' ~ mode ~ ', ' ~ (dates | length) ~ ' lake partitions to read', info=true) }}
    {{ return({'mode': mode, 'dates': dates, 'by_partition': by_partition}) }}
{% endmacro %}

{% macro entity_state_mode() %}
    {#- 'merge' when the state and its ledger exist, every ledger file is still in the
        snapshot and the ledger is not from a later night; 'rebuild' otherwise. -#}
    {%- if not execute or not entity_state_enabled() -%}
        {{ return('off') }}
    {%- endif -%}
    {%- set ledger = adapter.get_relation(this.database, this.schema, this.identifier ~ '__ledger') -%}
    {%- set state = adapter.get_relation(this.database, this.schema, this.identifier) -%}
    {%- if ledger is none or state is none or flags.FULL_REFRESH -%}
        {{ return('rebuild') }}
    {%- endif -%}
    {%- set day = nightly_date_range()[0] -%}
    {%- set stale = run_query(
        "select (select count(*) from " ~ _state_table('ledger') ~ " anti join " ~ _state_table('next') ~ " using (lake_file))"
        ~ " + (select count(*) from " ~ _state_table('ledger') ~ " where as_of > date '" ~ day ~ "')"
    ).columns[0].values()[0] -%}
    {{ return('merge' if stale == 0 else 'rebuild') }}
{% endmacro %}

{% macro entity_state_pre_hook(by_partition=false) %}
    {#- A rebuild starts from an empty state (the table is kept: dbt's incremental
        materialisation then inserts every row); a daily state first drops the rows of
        the partitions it reads again. -#}
    {%- set mode = entity_state_mode() -%}
    {%- if mode == 'rebuild' and is_incremental() -%}
        delete from {{ this }}
    {%- elif mode == 'merge' and by_partition -%}
        delete from {{ this }} where lake_date in (
            select lake_date from {{ _state_table('next') }}
            anti join {{ _state_table('ledger') }} using (lake_file)
        )
    {%- else -%}
        select 1
    {%- endif -%}
{% endmacro %}

{% macro entity_state_post_hook(step, window_days=none) %}
    {#- After the merge: 'expire' drops pairs no window reaches any more, 'ledger' then
        records the files merged (so a run that fails before this point is repeated). -#}
    {%- set day = nightly_date_range()[0] -%}
    {%- if entity_state_mode() == 'off' -%}
        select 1
    {%- elif step == 'expire' -%}
        delete from {{ this }} where last_date < date '{{ day }}' - {{ window_days }}
    {%- else -%}
        create or replace table {{ _state_table('ledger') }} as
            select lake_file, lake_date, date '{{ day }}' as as_of from {{ _state_table('next') }}
    {%- endif -%}
{% endmacro %}

{% macro entity_state_events(plan, columns) %}
    {#- The events this run merges: the partitions by literal (so DuckDB reads only
        those), then the snapshot's files (new ones, or every file of a partition read
        whole), only days before D. -#}
    {%- set day = nightly_date_range()[0] -%}
    select {{ columns | join(', ') }}
    from {{ ref('stg_transactions') }}
    {%- if plan.mode == 'off' or not plan.dates %}
    where false
    {%- else %}
    where lake_date in ({% for d in plan.dates %}date '{{ d }}'{{ ', ' if not loop.last }}{% endfor %})
        and lake_file in (
            select lake_file from {{ _state_table('next') }}
            {%- if plan.mode == 'merge' and not plan.by_partition %}
            anti join {{ _state_table('ledger') }} using (lake_file)
            {%- endif %}
        )
        and event_date < date '{{ day }}'
    {%- endif %}
{% endmacro %}

{% macro entity_state_pairs(entity_key, value_columns, plan) %}
    {#-
      The select of a state model: for each (entity, kind, value) of the merged events,
      the later of its merged day and the state's. `kind` is the value's column name.
    -#}
with

events as (

    {{ entity_state_events(plan, [entity_key, 'event_date'] + value_columns) }}

),

merged as (

    {%- for column in value_columns %}
    select {{ entity_key }}, '{{ column }}' as kind, {{ column }} as value, max(event_date) as last_date
    from events
    where {{ column }} is not null
    group by all
    {%- if not loop.last %}
    union all
    {%- endif %}
    {%- endfor %}

),

final as (

    select
        merged.{{ entity_key }},
        merged.kind,
        merged.value,
        {%- if is_incremental() and plan.mode == 'merge' %}
        greatest(merged.last_date, coalesce(state.last_date, merged.last_date)) as last_date
    from merged
    left join {{ this }} as state
        on state.{{ entity_key }} = merged.{{ entity_key }}
        and state.kind = merged.kind
        and state.value = merged.value
        {%- else %}
        merged.last_date
    from merged
        {%- endif %}

)

select * from final
{% endmacro %}

{% macro entity_state_daily(entity_key, plan) %}
    {#-
      The select of a daily state model: per entity and day, what the marts' window
      buckets add up (macros/feature_windows.sql, `window_features(..., daily=true)`):
      counts, integer-cent sums, maxima, flag counts, first and last event. One lake
      partition's rows are replaced whole when it has a new file.
    -#}
with

events as (

    {{ entity_state_events(plan, [entity_key, 'lake_date', 'event_date', 'event_time', 'amount',
        'is_night', 'is_foreign', 'is_card_not_present', 'is_ecommerce']) }}

),

final as (

    select
        {{ entity_key }},
        lake_date,
        event_date,
        count(*) as txn_count,
        sum({{ amount_cents('amount') }}) as cents,
        sum({{ amount_cents('amount') }} * {{ amount_cents('amount') }}) as cents_squared,
        max(amount) as amount_max,
        count(*) filter (where is_night) as night_count,
        count(*) filter (where is_foreign) as foreign_count,
        count(*) filter (where is_card_not_present) as cnp_count,
        count(*) filter (where is_ecommerce) as ecommerce_count,
        min(event_time) as first_seen_at,
        max(event_time) as last_seen_at
    from events
    group by {{ entity_key }}, lake_date, event_date

)

select * from final
{% endmacro %}

{% macro daily_windowed(daily_state, entity_key, window_days) %}
    {#- A mart's `windowed` rows for the run's one date D from its daily state: the days
        in [D - window_days, D), as the windowed events' `event_time >= D - w days`. -#}
    {%- set day = nightly_date_range()[0] -%}
    select date '{{ day }}' as feature_date, *
    from {{ daily_state }}
    where event_date >= date '{{ day }}' - {{ window_days }} and event_date < date '{{ day }}'
{%- endmacro %}

{% macro daily_first_seen(daily_state, entity_key) %}
    {#- Each entity's first event in the lake before D, from its daily state. -#}
    select {{ entity_key }}, min(first_seen_at) as first_seen_at
    from {{ daily_state }}
    group by {{ entity_key }}
{%- endmacro %}

{% macro distinct_counts_from_state(state, entity_key, aggregates, state_entity=none, prefix='counted') %}
    {#-
      The CTE `<prefix>` of `distinct_counts` for the run's one date D, read from an entity
      state: a value is in window w when its last day is (D - last_date <= w, the same
      test on the same days). With `state_entity`, the state is another entity's and its
      entities are counted per value of kind `entity_key` (the merchant's distinct
      accounts from the account state's merchant_id pairs).
    -#}
    {%- set plan = _window_plan(aggregates) -%}
    {%- set day = nightly_date_range()[0] -%}
    {%- if state_entity is not none -%}
        {%- for measure in plan.distinct if plan.columns[measure] != state_entity -%}
            {{ exceptions.raise_compiler_error(measure ~ " cannot be read from the " ~ state_entity ~ " state") }}
        {%- endfor -%}
    {%- endif %}
{{ prefix }} as (

    select
        {%- if state_entity is none %}
        {{ entity_key }},
        {%- else %}
        value as {{ entity_key }},
        {%- endif %}
        date '{{ day }}' as feature_date
        {%- for measure, windows in plan.distinct.items() %}
        {%- for days in windows %},
        count(*) filter (where
            {%- if state_entity is none %} kind = '{{ plan.columns[measure] }}' and{% endif %}
            last_date >= date '{{ day }}' - {{ days }}) as {{ measure }}_{{ days }}d
        {%- endfor %}
        {%- endfor %}
    from {{ state }}
    where last_date >= date '{{ day }}' - {{ plan.distinct.values() | sum(start=[]) | max }}
    {%- if state_entity is not none %}
        and kind = '{{ entity_key }}'
    {%- endif %}
    group by all

)
{%- endmacro %}
