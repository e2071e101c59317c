"""Load and check one model artifact before anything serves it.

Checks, in order, each failing with a ModelError that names the file, what was
expected and what was found: the sidecar parses; the ONNX file's sha256 matches the
sidecar; the protobuf parses; no tensor points at external data outside the model
directory; the ONNX metadata agrees with the sidecar; the sidecar's feature service,
feature order, dtypes and defaults equal the FeatureServiceSpec the caller serves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from streams.errors import ModelError
from streams.features.spec import FeatureServiceSpec
from streams.scoring.metadata import ModelMetadata, sidecar_path

__all__ = ["Artifact", "check_external_data", "check_feature_service", "load_artifact", "sha256_of"]

# ONNX metadata_props keys written by models.export and cross-checked here.
META_PREFIX = "streamscore."


@dataclass(frozen=True, slots=True)
class Artifact:
    """A checked artifact: its sidecar, its exact bytes and whether it uses external data."""

    path: Path
    metadata: ModelMetadata
    model_bytes: bytes
    has_external_data: bool


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_artifact(onnx_path: Path, spec: FeatureServiceSpec | None) -> Artifact:
    """Read ``onnx_path`` and its sidecar and run every check; ``spec=None`` skips the spec check.

    The bytes that were hashed are the bytes handed to ONNX Runtime, so a file replaced
    between the check and the load cannot slip through.
    """
    onnx_path = Path(onnx_path)
    metadata = ModelMetadata.read(sidecar_path(onnx_path))
    try:
        model_bytes = onnx_path.read_bytes()
    except OSError as exc:
        raise ModelError(f"model file {onnx_path} cannot be read: {exc}") from exc
    found = sha256_of(model_bytes)
    if found != metadata.onnx_sha256:
        raise ModelError(
            f"model file {onnx_path} is corrupt or was replaced: sha256 expected "
            f"{metadata.onnx_sha256} (from {sidecar_path(onnx_path).name}), found {found} "
            f"({len(model_bytes)} bytes)"
        )
    model = _parse(onnx_path, model_bytes)
    has_external = check_external_data(model, onnx_path)
    _check_onnx_metadata(model, metadata, onnx_path)
    if spec is not None:
        check_feature_service(metadata, spec, onnx_path)
    return Artifact(onnx_path, metadata, model_bytes, has_external)


def _parse(onnx_path: Path, model_bytes: bytes) -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - onnx ships with the train extra
        raise ModelError(
            f"cannot inspect {onnx_path}: the 'onnx' package is needed to check artifacts"
        ) from exc
    try:
        model = onnx.load_model_from_string(model_bytes)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelError(f"model file {onnx_path} is not a valid ONNX protobuf: {exc}") from exc
    if not model.HasField("graph") or not model.graph.output:
        raise ModelError(f"model file {onnx_path} has no graph or no outputs")
    return model


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto in a graph, its sparse tensors and (recursively) its subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _attribute_tensors(node.attribute)


def _attribute_tensors(attributes: Any) -> Iterator[Any]:
    for attr in attributes:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("sparse_tensor"):
            yield attr.sparse_tensor.values
            yield attr.sparse_tensor.indices
        for sparse in attr.sparse_tensors:
            yield sparse.values
            yield sparse.indices
        if attr.HasField("g"):
            yield from _tensors(attr.g)
        for sub in attr.graphs:
            yield from _tensors(sub)


def check_external_data(model: Any, onnx_path: Path) -> bool:
    """Refuse tensors whose external data lies outside the model's directory.

    Returns True when the model has (allowed) external data. A location that is
    absolute, drive-qualified, contains ``..`` or resolves (through symlinks) outside the
    directory is refused; so is a tensor marked EXTERNAL without a location.
    """
    import onnx

    base = onnx_path.resolve().parent
    tensors = list(_tensors(model.graph))
    for function in model.functions:
        for node in function.node:
            tensors.extend(_attribute_tensors(node.attribute))
    found = False
    for tensor in tensors:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        found = True
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        where = f"model file {onnx_path}: tensor {tensor.name!r} stores its data externally at"
        if not location:
            raise ModelError(f"{where} no location (expected a file name inside {base})")
        posix, windows = PurePosixPath(location), PureWindowsPath(location)
        if posix.is_absolute() or windows.is_absolute() or windows.drive:
            raise ModelError(
                f"{where} {location!r}, an absolute path; expected a relative path inside {base}"
            )
        if ".." in posix.parts or ".." in windows.parts:
            raise ModelError(
                f"{where} {location!r}, which climbs out with '..'; expected a file inside {base}"
            )
        target = (base / location).resolve()
        if not target.is_relative_to(base):
            raise ModelError(f"{where} {location!r}, which resolves to {target} outside {base}")
        if not target.is_file():
            raise ModelError(f"{where} {location!r}, but {target} does not exist")
    return found


def _check_onnx_metadata(model: Any, metadata: ModelMetadata, onnx_path: Path) -> None:
    props = {p.key: p.value for p in model.metadata_props if p.key.startswith(META_PREFIX)}
    expected = {
        f"{META_PREFIX}name": metadata.name,
        f"{META_PREFIX}version": metadata.version,
        f"{META_PREFIX}feature_service": metadata.feature_service,
        f"{META_PREFIX}n_features": str(len(metadata.features)),
    }
    for key, want in expected.items():
        if props.get(key) != want:
            raise ModelError(
                f"model file {onnx_path} does not belong to its sidecar: ONNX metadata {key} "
                f"expected {want!r}, found {props.get(key)!r}"
            )


def check_feature_service(metadata: ModelMetadata, spec: FeatureServiceSpec, path: Path) -> None:
    """The artifact must consume exactly ``spec``: same service, order, dtypes and defaults."""
    if metadata.feature_service != spec.name:
        raise ModelError(
            f"model {path} was trained on feature service {metadata.feature_service!r}, "
            f"expected {spec.name!r}"
        )
    if len(metadata.features) != len(spec.features):
        raise ModelError(
            f"model {path} expects {len(metadata.features)} features, feature service "
            f"{spec.name!r} has {len(spec.features)}"
        )
    for i, (have, want) in enumerate(zip(metadata.features, spec.features, strict=True)):
        if have.name != want.name:
            raise ModelError(
                f"model {path} feature order differs from {spec.name!r} at position {i}: "
                f"expected {want.name!r}, found {have.name!r}"
            )
        if have.dtype != want.dtype:
            raise ModelError(
                f"model {path} feature {have.name!r} dtype: expected {want.dtype!r}, "
                f"found {have.dtype!r}"
            )
        if have.default != want.default:
            raise ModelError(
                f"model {path} feature {have.name!r} was trained with missing-value default "
                f"{have.default!r}, feature service {spec.name!r} now declares {want.default!r}"
            )
