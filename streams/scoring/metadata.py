"""The JSON sidecar written next to each ONNX artifact: what the model is and how to feed it.

``models/artifacts/<name>-<version>.onnx`` has ``<name>-<version>.json`` beside it. The
sidecar is the contract the loader checks against the feature service before serving, and
it holds the sha256 of every file ONNX Runtime will read: the ``.onnx`` itself
(``onnx_sha256``) and each external data file it references (``external_data``, keyed by
the location written in the model, relative to the model's folder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.errors import ModelError
from streams.scoring.decide import Thresholds

__all__ = [
    "FORMAT_VERSION",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "FeatureColumn",
    "Histogram",
    "ModelMetadata",
    "sidecar_path",
]

FORMAT_VERSION = 1
# Every artifact, whatever the model kind, has one float32 input [N, F] and one float32 output [N].
INPUT_NAME = "features"
OUTPUT_NAME = "score"


def sidecar_path(onnx_path: Path) -> Path:
    """``<name>-<version>.json`` next to ``<name>-<version>.onnx``."""
    return onnx_path.with_suffix(".json")


@dataclass(frozen=True, slots=True)
class FeatureColumn:
    """One model input column as trained: name, dtype and the value imputed when missing."""

    name: str
    dtype: str
    default: float


@dataclass(frozen=True, slots=True)
class Histogram:
    """A training baseline for drift monitoring.

    ``edges`` are interior cut points (sorted, unique); ``proportions`` has
    ``len(edges) + 1`` entries: ``(-inf, e0)``, ``[e0, e1)``, ... ``[e_last, +inf)``.
    """

    edges: tuple[float, ...]
    proportions: tuple[float, ...]

    def to_dict(self) -> dict[str, list[float]]:
        return {"edges": list(self.edges), "proportions": list(self.proportions)}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Histogram:
        try:
            edges = tuple(float(e) for e in data["edges"])
            proportions = tuple(float(p) for p in data["proportions"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{where}: histogram needs numeric 'edges' and 'proportions'") from exc
        if len(proportions) != len(edges) + 1:
            raise ModelError(
                f"{where}: histogram has {len(edges)} edges but {len(proportions)} proportions "
                f"(expected {len(edges) + 1})"
            )
        return cls(edges, proportions)


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """Everything the sidecar says about one artifact."""

    name: str
    version: str
    kind: str
    feature_service: str
    features: tuple[FeatureColumn, ...]
    thresholds: Thresholds
    onnx_sha256: str
    # location (as written in the ONNX file, relative to its folder) -> sha256 of that file.
    external_data: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=dict)
    feature_baselines: dict[str, Histogram] = field(default_factory=dict)
    score_baseline: Histogram | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        """``<name>-<version>``: the artifact's file stem and its id in the registry."""
        return f"{self.name}-{self.version}"

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "feature_service": self.feature_service,
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "features": [
                {"name": f.name, "dtype": f.dtype, "default": f.default} for f in self.features
            ],
            "thresholds": self.thresholds.to_dict(),
            "metrics": self.metrics,
            "training_data": self.training_data,
            "baselines": {
                "score": self.score_baseline.to_dict() if self.score_baseline else None,
                "features": {k: v.to_dict() for k, v in self.feature_baselines.items()},
            },
            "params": self.params,
            "onnx_sha256": self.onnx_sha256,
            "external_data": dict(self.external_data),
        }

    def write(self, path: Path) -> None:
        # sort_keys keeps the sidecar byte-identical when training is re-run with the same seed.
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, path: Path) -> ModelMetadata:
        """Parse a sidecar; any missing or malformed field is a ModelError naming the file."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ModelError(f"model sidecar {path} does not exist") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"model sidecar {path} is not readable JSON: {exc}") from exc
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ModelMetadata:
        if not isinstance(data, dict):
            raise ModelError(f"{where}: sidecar must be a JSON object")
        if data.get("format_version") != FORMAT_VERSION:
            raise ModelError(
                f"{where}: sidecar format_version {data.get('format_version')!r}, "
                f"this streamscore reads {FORMAT_VERSION}"
            )
        if data.get("input") != INPUT_NAME or data.get("output") != OUTPUT_NAME:
            raise ModelError(
                f"{where}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, "
                f"found {data.get('input')!r} and {data.get('output')!r}"
            )
        try:
            features = tuple(
                FeatureColumn(str(f["name"]), str(f["dtype"]), float(f["default"]))
                for f in data["features"]
            )
            baselines = data.get("baselines") or {}
            score = baselines.get("score")
            return cls(
                name=str(data["name"]),
                version=str(data["version"]),
                kind=str(data["kind"]),
                feature_service=str(data["feature_service"]),
                features=features,
                thresholds=Thresholds.from_dict(data["thresholds"]),
                onnx_sha256=str(data["onnx_sha256"]),
                external_data=_external_data(data.get("external_data"), where),
                metrics={str(k): float(v) for k, v in (data.get("metrics") or {}).items()},
                training_data=dict(data.get("training_data") or {}),
                feature_baselines={
                    str(k): Histogram.from_dict(v, f"{where}: baseline {k}")
                    for k, v in (baselines.get("features") or {}).items()
                },
                score_baseline=Histogram.from_dict(score, f"{where}: score baseline")
                if score is not None
                else None,
                params=dict(data.get("params") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(
                f"{where}: sidecar is missing or has a malformed field: {exc!r}"
            ) from exc


def _external_data(value: Any, where: str) -> dict[str, str]:
    """``{location: sha256}``; absent means the model has no external data.

    Sidecars written before external data was hashed have no such field. That stays
    safe: a model that does reference external files is refused at load, because the
    sidecar does not hash them.
    """
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ModelError(
            f"{where}: 'external_data' must map each external data file's location to its "
            f"sha256 (both strings), found {value!r}"
        )
    return dict(value)
