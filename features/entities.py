"""Feast entities: the keys features hang on."""

from __future__ import annotations

from feast import Entity, ValueType

account = Entity(
    name="account",
    join_keys=["account_id"],
    value_type=ValueType.STRING,
    description="A card account (transaction.account_id).",
)
card = Entity(
    name="card",
    join_keys=["card_id"],
    value_type=ValueType.STRING,
    description="A card (transaction.card_id).",
)
merchant = Entity(
    name="merchant",
    join_keys=["merchant_id"],
    value_type=ValueType.STRING,
    description="An acquirer merchant (transaction.merchant_id).",
)

ENTITIES = {"account": account, "card": card, "merchant": merchant}
