{#-
  The combination of columns is unique: the grain of a feature mart is (entity, feature_date).
  With feature_date in it, only the dates this run builds are checked: the incremental
  delete+insert replaces those dates whole, so a duplicate can only be a new one.
-#}
{% test unique_combination(model, combination) %}

with

grouped as (

    select {{ combination | join(', ') }}, count(*) as row_count
    from {{ model }}
    {%- if 'feature_date' in combination %}
    {%- set bounds = nightly_date_range() %}
    where feature_date between cast('{{ bounds[0] }}' as date) and cast('{{ bounds[1] }}' as date)
    {%- endif %}
    group by {{ combination | join(', ') }}

),

final as (

    select * from grouped where row_count > 1

)

select * from final

{% endtest %}
