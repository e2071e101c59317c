"""Scoring: checked ONNX artifacts, an ONNX Runtime Scorer, decisions and the model registry.

Pure numpy/ONNX Runtime code with no faust import; the worker hands it float32 matrices
in feature-service order and gets scores and decisions back.

Errors: ``ModelError`` (an artifact is corrupt, mismatched or cannot load) and
``ConfigError`` (registry.yaml or STREAMSCORE_PROVIDERS is invalid), both from
``streams.errors``.
"""

from __future__ import annotations

from streams.scoring.artifact import Artifact, load_artifact
from streams.scoring.decide import Decision, Decisions, Thresholds, decide
from streams.scoring.metadata import (
    INPUT_NAME,
    OUTPUT_NAME,
    FeatureColumn,
    Histogram,
    ModelMetadata,
)
from streams.scoring.modelset import Challenger, ModelHolder, ModelSet, ScoredBatch
from streams.scoring.providers import select_providers
from streams.scoring.registry import RegistryConfig, load_registry
from streams.scoring.scorer import Scorer

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "Artifact",
    "Challenger",
    "Decision",
    "Decisions",
    "FeatureColumn",
    "Histogram",
    "ModelHolder",
    "ModelMetadata",
    "ModelSet",
    "RegistryConfig",
    "ScoredBatch",
    "Scorer",
    "Thresholds",
    "decide",
    "load_artifact",
    "load_registry",
    "select_providers",
]
