{%- set plan = entity_state_plan(window_days=30) %}
{{ config(
    materialized='incremental',
    incremental_strategy='delete+insert',
    unique_key=['card_id', 'kind', 'value'],
    on_schema_change='fail',
    pre_hook="{{ entity_state_pre_hook() }}",
    post_hook=["{{ entity_state_post_hook('expire', 30) }}", "{{ entity_state_post_hook('ledger') }}"],
) }}

{#-
  The card state (macros/entity_state.sql): each merchant, merchant country and device a
  card was used at, with the last day before D, over the card's 30-day windows.
-#}

{{ entity_state_pairs('card_id', ['merchant_id', 'merchant_country', 'device_id'], plan) }}
