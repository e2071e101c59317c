{#-
  Every column whose name matches `column_regex` (all columns when omitted, except those in
  `exclude`) lies in [min_value, max_value] and is not null. One query per model, not one
  per column: the marts have ~120 features. In a model with a feature_date, only the dates
  this run builds are checked (earlier dates were checked when they were built; the marts
  grow by a million rows a night at a million accounts).
-#}
{% test columns_in_range(model, min_value=none, max_value=none, column_regex='.*', exclude=[]) %}

{%- set pattern = modules.re.compile(column_regex) %}
{%- set checked = [] %}
{%- set dated = [] %}
{%- for column in adapter.get_columns_in_relation(model) %}
    {%- if column.name == 'feature_date' %}{% do dated.append(true) %}{% endif %}
    {%- if column.name not in exclude and pattern.search(column.name) %}
        {%- do checked.append(adapter.quote(column.name)) %}
    {%- endif %}
{%- endfor %}

with

source as (

    select * from {{ model }}
    {%- if dated %}
    {%- set bounds = nightly_date_range() %}
    where feature_date between cast('{{ bounds[0] }}' as date) and cast('{{ bounds[1] }}' as date)
    {%- endif %}

),

final as (

    select *
    from source
    where false
    {%- for column in checked %}
        or {{ column }} is null
        {%- if min_value is not none %} or {{ column }} < {{ min_value }}{% endif %}
        {%- if max_value is not none %} or {{ column }} > {{ max_value }}{% endif %}
    {%- endfor %}

)

select * from final

{% endtest %}
