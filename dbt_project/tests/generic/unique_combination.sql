{#- The combination of columns is unique: the grain of a feature mart is (entity, feature_date). -#}
{% test unique_combination(model, combination) %}

with

grouped as (

    select {{ combination | join(', ') }}, count(*) as row_count
    from {{ model }}
    group by {{ combination | join(', ') }}

),

final as (

    select * from grouped where row_count > 1

)

select * from final

{% endtest %}
