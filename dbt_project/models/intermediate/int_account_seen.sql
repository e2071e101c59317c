{%- set plan = entity_state_plan(window_days=90) %}
{{ config(
    materialized='incremental',
    incremental_strategy='delete+insert',
    unique_key=['account_id', 'kind', 'value'],
    on_schema_change='fail',
    pre_hook="{{ entity_state_pre_hook() }}",
    post_hook=["{{ entity_state_post_hook('expire', 90) }}", "{{ entity_state_post_hook('ledger') }}"],
) }}

{#-
  The account state (macros/entity_state.sql): each merchant, merchant country, device
  and card an account used, with the last day before D, over the longest window that
  reads it (90 days: the account's distinct counts and the merchant's distinct accounts).
-#}

{{ entity_state_pairs('account_id', ['merchant_id', 'merchant_country', 'device_id', 'card_id'], plan) }}
