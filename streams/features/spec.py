"""The contract between the feature registry, training and the scorer: ordered, typed features.

A model names a feature service; the service is an ordered tuple of FeatureSpec. The
training set's columns, the ONNX input's columns and the online lookup's matrix
columns all follow this order exactly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One model input column.

    ``name`` is the full name ``<feature_view>__<feature>`` (Feast's full feature names),
    or ``event__<feature>`` for features computed from the event itself.
    """

    name: str
    dtype: str = "float32"
    default: float = 0.0
    owner: str = ""
    sla: str = ""
    drift_threshold: float = 0.2


@dataclass(frozen=True, slots=True)
class FeatureServiceSpec:
    """A versioned feature service, e.g. ``fraud_v1``: what a model consumes, in order."""

    name: str
    features: tuple[FeatureSpec, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)
