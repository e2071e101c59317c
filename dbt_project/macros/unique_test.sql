{#-
  dbt's `unique` test, hash first: the same failing rows (each duplicated value and its
  count) from a group-by on a 64-bit hash instead of the value. Every duplicate has a
  duplicated hash, and a collision of two distinct values is dropped by the exact
  group-by over the candidates. At a million accounts (52 M transaction ids) this is
  6 s instead of 12-21 s; it overrides dbt's default__test_unique for DuckDB.
-#}
{% macro duckdb__test_unique(model, column_name) %}

with

hashed as not materialized (

    select {{ column_name }} as unique_field, hash({{ column_name }}) as field_hash
    from {{ model }}
    where {{ column_name }} is not null

),

candidates as (

    select field_hash
    from hashed
    group by field_hash
    having count(*) > 1

),

final as (

    select unique_field, count(*) as n_records
    from hashed
    where field_hash in (select field_hash from candidates)
    group by unique_field
    having count(*) > 1

)

select * from final

{% endmacro %}
