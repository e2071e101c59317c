{#-
  The window features of each mart, one list read by the mart and by its distinct-count
  model: (windows, measures) pairs, each window-major (for every window, every measure);
  the columns are named <measure>_<days>d in that order.
-#}
{% macro mart_aggregates(entity) %}
    {%- if entity == 'account' -%}
        {{ return([
    ([1, 7, 30, 90], [
        'txn_count', 'amount_sum', 'amount_mean', 'amount_std', 'amount_max',
        'distinct_merchants', 'distinct_countries', 'distinct_devices',
        'night_ratio', 'foreign_ratio', 'cnp_ratio', 'ecommerce_ratio',
    ]),
    ([30, 90], ['distinct_cards']),
    ([7, 30, 90], ['active_days']),
    ([90], ['fraud_labels']),
]) }}
    {%- elif entity == 'card' -%}
        {{ return([
    ([1, 7, 30], [
        'txn_count', 'amount_sum', 'amount_mean', 'amount_std', 'amount_max',
        'distinct_merchants', 'distinct_countries',
        'night_ratio', 'foreign_ratio', 'cnp_ratio',
    ]),
    ([30], ['distinct_devices']),
]) }}
    {%- elif entity == 'merchant' -%}
        {{ return([
    ([7, 30, 90], [
        'txn_count', 'amount_sum', 'amount_mean', 'amount_std', 'amount_max',
        'distinct_accounts', 'foreign_ratio', 'cnp_ratio',
    ]),
    ([30, 90], ['fraud_labels']),
]) }}
    {%- else -%}
        {{ exceptions.raise_compiler_error("no mart aggregates for entity '" ~ entity ~ "'") }}
    {%- endif -%}
{% endmacro %}
