{#- Strictly greater than zero (amounts). -#}
{% test positive(model, column_name) %}

with

final as (

    select {{ column_name }}
    from {{ model }}
    where {{ column_name }} <= 0

)

select * from final

{% endtest %}
