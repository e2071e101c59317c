{%- set plan = entity_state_plan(by_partition=true) %}
{{ config(
    materialized='incremental',
    incremental_strategy='append',
    on_schema_change='fail',
    pre_hook="{{ entity_state_pre_hook(by_partition=true) }}",
    post_hook=["{{ entity_state_post_hook('ledger') }}"],
) }}

{#-
  The card daily state (macros/entity_state.sql): one row per card, lake partition and
  day with what the card mart's windows add up, and the first and last event. Every
  partition is kept (the first event is over the whole lake).
-#}

{{ entity_state_daily('card_id', plan) }}
