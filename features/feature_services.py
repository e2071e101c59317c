"""Feast feature services: what a model consumes, versioned by name.

A new feature set is a new service (``fraud_v2``); a service's contents never change once a
model is trained on it. ``event_features`` names the version of the event-level features
(``streams.features.event``) appended after the entity features.
"""

from __future__ import annotations

from feast import FeatureService
from feature_views import account, card, merchant

fraud_v1 = FeatureService(
    name="fraud_v1",
    features=[account, card, merchant],
    description="Card-fraud model inputs, version 1: account, card and merchant nightly features.",
    tags={"version": "1", "event_features": "v1"},
)
