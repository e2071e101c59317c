"""The JSON sidecar written next to each ONNX artifact: what the model is and how to feed it.

``models/artifacts/<name>-<version>.onnx`` has ``<name>-<version>.json`` beside it. The
sidecar is the contract the loader checks against the feature service before serving, and
it holds the sha256 of every file ONNX Runtime will read: the ``.onnx`` itself
(``onnx_sha256``) and each external data file it references (``external_data``, keyed by
the location written in the model, relative to the model's folder).

A model may come in more than one variant, each a whole ONNX graph with the same input and
output. The main variant is ``<name>-<version>.onnx`` itself (``main_variant``: ``trees``
for LightGBM, ``default`` otherwise; its sha256 is ``onnx_sha256``); every other one is in
``variants`` (name -> file and sha256): LightGBM adds ``tensor``,
``<name>-<version>.tensor.onnx``, made of operators a GPU runs (see ``models/tensorise.py``).
Sidecars written before variants existed have neither field and read as one ``default``
variant, the main file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.errors import ModelError
from streams.scoring.decide import Thresholds

__all__ = [
    "DEFAULT_VARIANT",
    "FORMAT_VERSION",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "TENSOR_VARIANT",
    "TREES_VARIANT",
    "FeatureColumn",
    "Histogram",
    "ModelMetadata",
    "VariantFile",
    "sidecar_path",
    "variant_file_name",
]

FORMAT_VERSION = 1
# Every artifact, whatever the model kind, has one float32 input [N, F] and one float32 output [N].
INPUT_NAME = "features"
OUTPUT_NAME = "score"
# Variant names: the main file of a model with one variant, LightGBM's tree-ensemble
# operator graph (CPU only in ONNX Runtime), and its plain tensor-op graph (runs on a GPU).
DEFAULT_VARIANT = "default"
TREES_VARIANT = "trees"
TENSOR_VARIANT = "tensor"
_VARIANT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def sidecar_path(onnx_path: Path) -> Path:
    """``<name>-<version>.json`` next to ``<name>-<version>.onnx``."""
    return onnx_path.with_suffix(".json")


def variant_file_name(model_id: str, variant: str) -> str:
    """``<model_id>.<variant>.onnx``: where a variant other than the main one lives."""
    return f"{model_id}.{variant}.onnx"


@dataclass(frozen=True, slots=True)
class VariantFile:
    """One extra variant: its file (a plain name in the model's folder) and that file's sha256."""

    file: str
    sha256: str


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
    # The main file's variant name, and every other variant (name -> file and sha256).
    main_variant: str = DEFAULT_VARIANT
    variants: dict[str, VariantFile] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        """``<name>-<version>``: the artifact's file stem and its id in the registry."""
        return f"{self.name}-{self.version}"

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def variant_names(self) -> tuple[str, ...]:
        """The main variant first, then the others in name order."""
        return (self.main_variant, *sorted(self.variants))

    def variant_files(self) -> dict[str, VariantFile]:
        """Every variant's file and sha256, the main one first."""
        return {
            self.main_variant: VariantFile(f"{self.model_id}.onnx", self.onnx_sha256),
            **{name: self.variants[name] for name in sorted(self.variants)},
        }

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
            "main_variant": self.main_variant,
            "variants": {
                name: {"file": v.file, "sha256": v.sha256} for name, v in self.variants.items()
            },
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
            name, version = str(data["name"]), str(data["version"])
            main_variant = str(data.get("main_variant", DEFAULT_VARIANT))
            variants = _variants(data.get("variants"), f"{name}-{version}", main_variant, where)
            return cls(
                name=name,
                version=version,
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
                main_variant=main_variant,
                variants=variants,
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


def _variants(value: Any, model_id: str, main_variant: str, where: str) -> dict[str, VariantFile]:
    """The variants other than the main one, from the sidecar's ``variants`` field.

    Absent (a sidecar from before variants, or a model with one variant): none. Each
    entry names the plain file ``<model_id>.<name>.onnx`` beside the main file and its
    sha256; names are lower-case identifiers, so no entry can point anywhere else.
    """
    if not _VARIANT_NAME.match(main_variant):
        raise ModelError(
            f"{where}: main_variant {main_variant!r} is not a lower-case identifier (a-z, 0-9, _)"
        )
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ModelError(
            f"{where}: 'variants' must map each variant name to its file and sha256, "
            f"found {value!r}"
        )
    variants: dict[str, VariantFile] = {}
    for name, entry in value.items():
        if not isinstance(name, str) or not _VARIANT_NAME.match(name):
            raise ModelError(
                f"{where}: variant name {name!r} is not a lower-case identifier (a-z, 0-9, _)"
            )
        if name == main_variant:
            raise ModelError(
                f"{where}: variant {name!r} is the main variant (the file {model_id}.onnx, "
                f"hashed by onnx_sha256) and cannot be listed again in 'variants'"
            )
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("file"), str)
            and isinstance(entry.get("sha256"), str)
        ):
            raise ModelError(
                f"{where}: variant {name!r} needs a 'file' and a 'sha256' (strings), "
                f"found {entry!r}"
            )
        expected = variant_file_name(model_id, name)
        if entry["file"] != expected:
            raise ModelError(
                f"{where}: variant {name!r} names file {entry['file']!r}, expected "
                f"{expected!r} (beside {model_id}.onnx)"
            )
        variants[name] = VariantFile(entry["file"], entry["sha256"])
    return variants
