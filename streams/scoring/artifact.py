"""Load and check one model artifact before anything serves it.

Every file ONNX Runtime needs (the ``.onnx`` and each external data file it references) is
read once into memory and hashed; the session is then built from those same bytes, never
from a path, so a file replaced after the check cannot reach ONNX Runtime.

Checks, in order, each failing with a ModelError that names the file, what was expected
and what was found: the sidecar parses; the ONNX file's sha256 matches the sidecar; the
protobuf parses; every externally stored tensor points at a file inside the model's
directory (relative, no ``..``, no symlink out) that exists; the ONNX metadata agrees with
the sidecar; the sidecar's feature service, feature order, dtypes and defaults equal the
FeatureServiceSpec the caller serves; the sidecar hashes exactly the external files the
model references; each external file's sha256 matches and holds every tensor's bytes;
then each further variant the sidecar lists (``<name>-<version>.<variant>.onnx``): a
regular file in the model's folder whose sha256 matches, that parses, is self-contained
(no external data), says it is that variant of that model and has the same signature.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from streams.errors import ModelError
from streams.features.spec import FeatureServiceSpec
from streams.scoring.metadata import INPUT_NAME, OUTPUT_NAME, ModelMetadata, sidecar_path

__all__ = [
    "Artifact",
    "artifact_hashes",
    "check_feature_service",
    "external_data_files",
    "load_artifact",
    "sha256_of",
]

# ONNX metadata_props keys written by models.export and cross-checked here.
META_PREFIX = "streamscore."
# A serialised ModelProto cannot exceed 2 GiB (protobuf's limit).
PROTOBUF_LIMIT = 2**31 - 1
NOT_LOADED = "the model was not loaded"
# ONNX Runtime reads a tensor with this location from the memory address in its offset.
ORT_MEMORY_TAG = "*/_ORT_MEM_ADDR_/*"


@dataclass(frozen=True, slots=True)
class Artifact:
    """A checked artifact: its sidecar and the exact bytes of every file ONNX Runtime needs.

    ``external_data`` maps each external data location, as written in the model, to the
    contents of that file as read and hashed by ``load_artifact``. ``path`` and
    ``model_bytes`` are the main variant's; ``variants`` holds every other variant's
    hashed bytes, and :meth:`for_variant` gives the Artifact a session for one of them
    is built from.
    """

    path: Path
    metadata: ModelMetadata
    model_bytes: bytes
    external_data: Mapping[str, bytes] = field(default_factory=dict)
    variants: Mapping[str, bytes] = field(default_factory=dict)
    # None: the main variant; otherwise the variant that path and model_bytes hold.
    variant_name: str | None = None

    @property
    def has_external_data(self) -> bool:
        return bool(self.external_data)

    @property
    def variant(self) -> str:
        """The variant ``model_bytes`` is."""
        return self.variant_name or self.metadata.main_variant

    def for_variant(self, name: str) -> Artifact:
        """The artifact as variant ``name``: that file's path and the bytes hashed at load."""
        if name == self.variant:
            return self
        if name not in self.variants:
            raise ModelError(
                f"model {self.path} has no variant {name!r}; it has "
                f"{', '.join(self.metadata.variant_names)}"
            )
        return Artifact(
            self.path.with_name(self.metadata.variants[name].file),
            self.metadata,
            self.variants[name],
            variant_name=name,
        )

    def session_model(self, *, initializers_in_memory: bool) -> bytes:
        """The model to hand ``onnxruntime.InferenceSession``, made only of hashed bytes.

        ONNX Runtime takes the external files of the main graph's initializers from
        memory (``SessionOptions.add_external_initializers_from_files_in_memory``, given
        ``external_data``), but opens files itself for external tensors anywhere else:
        subgraphs, Constant attributes, sparse tensors, functions. Those tensors are
        copied into the graph here from ``external_data``; with
        ``initializers_in_memory=False`` (an onnxruntime without that method) every
        external tensor is. A model with nothing to copy is returned as the bytes hashed.
        """
        if not self.external_data:
            return self.model_bytes
        model = _parse(self.path, self.model_bytes)
        todo = [
            t
            for t, top_level in _all_tensors(model)
            if _is_external(t) and not (top_level and initializers_in_memory)
        ]
        if not todo:
            return self.model_bytes
        spans = [(t, *_span(t, self.external_data, self.path)) for t in todo]
        grown = len(self.model_bytes) + sum(length for _, _, _, length in spans)
        if grown > PROTOBUF_LIMIT:
            raise ModelError(
                f"model {self.path}: copying {grown - len(self.model_bytes)} bytes of external "
                f"data into the graph would pass protobuf's 2 GiB limit ({grown} bytes); keep "
                f"large tensors as main-graph initializers and use an onnxruntime with "
                f"SessionOptions.add_external_initializers_from_files_in_memory; {NOT_LOADED}"
            )
        for tensor, location, offset, length in spans:
            tensor.raw_data = self.external_data[location][offset : offset + length]
            del tensor.external_data[:]
            tensor.data_location = _onnx().TensorProto.DEFAULT
        return bytes(model.SerializeToString(deterministic=True))


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_artifact(onnx_path: Path, spec: FeatureServiceSpec | None) -> Artifact:
    """Read ``onnx_path``, its sidecar and its external data files and run every check.

    ``spec=None`` skips the spec check. Each file is read exactly once; the Artifact holds
    the bytes that were hashed, and only those reach ONNX Runtime (see ``Scorer``).
    """
    onnx_path = Path(onnx_path)
    sidecar = sidecar_path(onnx_path)
    metadata = ModelMetadata.read(sidecar)
    model_bytes = _read(onnx_path, "model file")
    found = sha256_of(model_bytes)
    if found != metadata.onnx_sha256:
        raise ModelError(
            f"model file {onnx_path} is corrupt or was replaced: sha256 expected "
            f"{metadata.onnx_sha256} (from {sidecar.name}), found {found} "
            f"({len(model_bytes)} bytes); {NOT_LOADED}"
        )
    model = _parse(onnx_path, model_bytes)
    files = external_data_files(model, onnx_path)
    _check_onnx_metadata(model, metadata, onnx_path)
    if spec is not None:
        check_feature_service(metadata, spec, onnx_path)
    # Cheap checks first: the external files (possibly gigabytes) are read last.
    external = _read_external(files, metadata, onnx_path)
    for tensor, _ in _all_tensors(model):
        if _is_external(tensor):
            _span(tensor, external, onnx_path)
    variants = {name: _read_variant(name, metadata, onnx_path) for name in metadata.variants}
    return Artifact(onnx_path, metadata, model_bytes, external, variants)


def _read_variant(name: str, metadata: ModelMetadata, onnx_path: Path) -> bytes:
    """Read, hash and check one further variant; its bytes are what a session gets."""
    base = onnx_path.resolve().parent
    path = onnx_path.with_name(metadata.variants[name].file)
    where = f"model file {path} (variant {name!r} of {onnx_path.name})"
    if not path.resolve().is_relative_to(base):
        raise ModelError(f"{where} resolves to {path.resolve()} outside {base}; {NOT_LOADED}")
    if not path.exists():
        raise ModelError(
            f"{where} does not exist: its sidecar {sidecar_path(onnx_path).name} lists it; "
            f"{NOT_LOADED}"
        )
    data = _read(path, f"variant {name!r} file")
    found, expected = sha256_of(data), metadata.variants[name].sha256
    if found != expected:
        raise ModelError(
            f"{where} is corrupt or was replaced: sha256 expected {expected} (from "
            f"{sidecar_path(onnx_path).name}), found {found} ({len(data)} bytes); {NOT_LOADED}"
        )
    model = _parse(path, data)
    if any(_is_external(t) for t, _ in _all_tensors(model)):
        raise ModelError(
            f"{where} stores tensors in external data files; a variant other than the main "
            f"one must be self-contained; {NOT_LOADED}"
        )
    _check_onnx_metadata(model, metadata, path, variant=name)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    outputs = [o.name for o in model.graph.output]
    if inputs != [INPUT_NAME] or OUTPUT_NAME not in outputs:
        raise ModelError(
            f"{where}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r} like the main "
            f"file, found inputs {inputs} and outputs {outputs}; {NOT_LOADED}"
        )
    return data


def artifact_hashes(onnx_path: Path) -> tuple[str, dict[str, str]]:
    """The sha256 of ``onnx_path`` and of each external data file it references.

    What a sidecar records (``onnx_sha256``, ``external_data``); the writer's side of
    ``load_artifact``, with the same location checks.
    """
    onnx_path = Path(onnx_path)
    model_bytes = _read(onnx_path, "model file")
    files = external_data_files(_parse(onnx_path, model_bytes), onnx_path)
    return sha256_of(model_bytes), {
        location: sha256_of(_read(target, "external data file"))
        for location, target in sorted(files.items())
    }


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - onnx is a core dependency
        raise ModelError("the 'onnx' package is needed to check model artifacts") from exc
    return onnx


def _read(path: Path, what: str) -> bytes:
    """The whole of one regular file (a FIFO or device could block or never end)."""
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ModelError(f"{what} {path} is not a regular file; {NOT_LOADED}")
            return f.read()
    except OSError as exc:
        raise ModelError(f"{what} {path} cannot be read: {exc}; {NOT_LOADED}") from exc


def _parse(onnx_path: Path, model_bytes: bytes) -> Any:
    onnx = _onnx()
    try:
        model = onnx.load_model_from_string(model_bytes)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelError(f"model file {onnx_path} is not a valid ONNX protobuf: {exc}") from exc
    if not model.HasField("graph") or not model.graph.output:
        raise ModelError(f"model file {onnx_path} has no graph or no outputs")
    return model


def _all_tensors(model: Any) -> Iterator[tuple[Any, bool]]:
    """Every TensorProto in the model, paired with True for the main graph's initializers."""
    for tensor in model.graph.initializer:
        yield tensor, True
    nested = [_nested_tensors(model.graph)]
    nested += [_attribute_tensors(node.attribute) for f in model.functions for node in f.node]
    # ONNX Runtime ignores training_info; it is checked anyway so no file is left unhashed.
    for info in model.training_info:
        nested += [_tensors(info.initialization), _tensors(info.algorithm)]
    for tensors in nested:
        for tensor in tensors:
            yield tensor, False


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto in a graph, its sparse tensors and (recursively) its subgraphs."""
    yield from graph.initializer
    yield from _nested_tensors(graph)


def _nested_tensors(graph: Any) -> Iterator[Any]:
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


def _is_external(tensor: Any) -> bool:
    return bool(tensor.data_location == _onnx().TensorProto.EXTERNAL)


def _entries(tensor: Any) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def external_data_files(model: Any, onnx_path: Path) -> dict[str, Path]:
    """Each external data location the model references, mapped to the file it names.

    Refused: a tensor marked EXTERNAL without a location; a location that is absolute,
    drive-qualified, contains ``..``, is ONNX Runtime's raw-memory tag, is not in plain
    form (``./w.bin``, ``a//b``: ONNX Runtime matches in-memory files by name, so one file
    must have one spelling), or resolves (through symlinks) outside the model's directory;
    a file that is missing or not a regular file.
    """
    base = onnx_path.resolve().parent
    files: dict[str, Path] = {}
    for tensor, _ in _all_tensors(model):
        if not _is_external(tensor):
            continue
        location = _entries(tensor).get("location", "")
        if location in files:
            continue
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
        if location == ORT_MEMORY_TAG:
            raise ModelError(
                f"{where} {location!r}, ONNX Runtime's tag for data at a raw memory address; "
                f"expected a file name inside {base}"
            )
        if posix.as_posix() != location:
            raise ModelError(
                f"{where} {location!r}, which is not in plain form; expected {posix.as_posix()!r}"
            )
        target = (base / location).resolve()
        if not target.is_relative_to(base):
            raise ModelError(f"{where} {location!r}, which resolves to {target} outside {base}")
        if not target.exists():
            raise ModelError(f"{where} {location!r}, but {target} does not exist; {NOT_LOADED}")
        if not target.is_file():
            raise ModelError(f"{where} {location!r}, but {target} is not a regular file")
        files[location] = target
    return files


def _read_external(
    files: Mapping[str, Path], metadata: ModelMetadata, onnx_path: Path
) -> dict[str, bytes]:
    """Read and hash each referenced file; the sidecar must hash exactly these files."""
    sidecar = sidecar_path(onnx_path)
    unhashed = sorted(set(files) - set(metadata.external_data))
    if unhashed:
        raise ModelError(
            f"model file {onnx_path} reads external data from {unhashed} (in {onnx_path.parent}) "
            f"but its sidecar {sidecar} records no sha256 for it: expected an 'external_data' "
            f"entry per file, found {sorted(metadata.external_data)}; {NOT_LOADED}"
        )
    unreferenced = sorted(set(metadata.external_data) - set(files))
    if unreferenced:
        raise ModelError(
            f"sidecar {sidecar} hashes external data {unreferenced} that model file "
            f"{onnx_path} does not reference, so it does not describe this model; {NOT_LOADED}"
        )
    external: dict[str, bytes] = {}
    for location, target in files.items():
        data = _read(target, "external data file")
        found, expected = sha256_of(data), metadata.external_data[location]
        if found != expected:
            raise ModelError(
                f"external data file {target} (location {location!r} of model file "
                f"{onnx_path}) is corrupt or was replaced: sha256 expected {expected} "
                f"(from {sidecar.name}), found {found} ({len(data)} bytes); {NOT_LOADED}"
            )
        external[location] = data
    return external


def _span(tensor: Any, external: Mapping[str, bytes], onnx_path: Path) -> tuple[str, int, int]:
    """``(location, offset, length)`` of a tensor's bytes, checked to lie inside the file.

    Without a ``length`` the tensor runs to the end of the file, as ``onnx`` reads it.
    """
    entries = _entries(tensor)
    location = entries["location"]
    size = len(external[location])
    where = f"model file {onnx_path}: tensor {tensor.name!r} in external data {location!r}"
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else size - offset
    except ValueError as exc:
        raise ModelError(f"{where} has a non-integer offset or length: {exc}") from exc
    if offset < 0 or length < 0 or offset + length > size:
        raise ModelError(
            f"{where} spans bytes [{offset}, {offset + length}), but the file has {size} "
            f"bytes; {NOT_LOADED}"
        )
    return location, offset, length


def _check_onnx_metadata(
    model: Any, metadata: ModelMetadata, onnx_path: Path, *, variant: str | None = None
) -> None:
    """The ONNX metadata names this model; ``streamscore.variant``, which files written
    before variants lack, must name the variant the sidecar says the file is."""
    props = {p.key: p.value for p in model.metadata_props if p.key.startswith(META_PREFIX)}
    expected = {
        f"{META_PREFIX}name": metadata.name,
        f"{META_PREFIX}version": metadata.version,
        f"{META_PREFIX}feature_service": metadata.feature_service,
        f"{META_PREFIX}n_features": str(len(metadata.features)),
    }
    variant_key = f"{META_PREFIX}variant"
    if variant is not None or variant_key in props:
        expected[variant_key] = variant or metadata.main_variant
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
