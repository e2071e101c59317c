"""Native model → ONNX with one float32 input ``features`` [N, F] and one output ``score`` [N].

Both converters emit ``label`` and ``probabilities`` [N, 2] (zipmap disabled); we
append a Gather of the positive-class column, drop every other output and prune the
nodes that only fed them, then stamp streamscore metadata into ``metadata_props`` so
the loader can tell an ONNX file from a foreign one with the same name.

``export_variants`` gives every variant of one model, main first: LightGBM as ``trees``
(onnxmltools' TreeEnsemble operator, fastest on CPU, CPU-only in ONNX Runtime) and
``tensor`` (``models.tensorise``, standard operators a GPU runs); the MLP as ``default``.
``artifact_variants`` reads them back from a written artifact, hashes checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.tensorise import tensorise
from streams.errors import ModelError
from streams.scoring.artifact import META_PREFIX, load_artifact
from streams.scoring.metadata import (
    DEFAULT_VARIANT,
    INPUT_NAME,
    OUTPUT_NAME,
    TENSOR_VARIANT,
    TREES_VARIANT,
)

__all__ = [
    "artifact_variants",
    "export_variants",
    "lightgbm_to_onnx",
    "lightgbm_to_tensor_onnx",
    "sklearn_to_onnx",
    "stamp",
]

# Opsets ONNX Runtime >= 1.20 runs everywhere (CPU, CUDA, TensorRT).
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
LIGHTGBM_OPSET = 15


def lightgbm_to_onnx(model: Any, n_features: int) -> onnx.ModelProto:
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    onx = convert_lightgbm(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        zipmap=False,
        # onnxmltools takes the main opset only, and its LightGBM converter stops at 15.
        target_opset=LIGHTGBM_OPSET,
    )
    return _positive_class_only(onx)


def lightgbm_to_tensor_onnx(model: Any, n_features: int) -> onnx.ModelProto:
    """The same LightGBM as plain tensor operators (``models.tensorise``), for a GPU."""
    booster = getattr(model, "booster_", model)  # an LGBMClassifier or a Booster
    return tensorise(booster.dump_model(), n_features)


def export_variants(kind: str, model: Any, n_features: int) -> list[tuple[str, onnx.ModelProto]]:
    """Every variant of a fitted model as ``(variant name, ONNX)``, the main one first."""
    if kind == "lightgbm":
        return [
            (TREES_VARIANT, lightgbm_to_onnx(model, n_features)),
            (TENSOR_VARIANT, lightgbm_to_tensor_onnx(model, n_features)),
        ]
    if kind == "mlp":
        return [(DEFAULT_VARIANT, sklearn_to_onnx(model, n_features))]
    raise ModelError(f"no ONNX export for model kind {kind!r}")


def artifact_variants(onnx_path: Path) -> list[tuple[str, bytes]]:
    """Every variant of a written artifact as ``(variant name, ONNX bytes)``, main first.

    The bytes are the ones ``load_artifact`` hashed against the sidecar (so a GPU check
    runs exactly what serving would).
    """
    artifact = load_artifact(onnx_path, None)
    return [
        (artifact.variant, artifact.model_bytes),
        *((name, artifact.variants[name]) for name in sorted(artifact.variants)),
    ]


def sklearn_to_onnx(pipeline: Any, n_features: int) -> onnx.ModelProto:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(
        pipeline,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        options={"zipmap": False},
        target_opset=TARGET_OPSET,
    )
    return _positive_class_only(_scaler_as_standard_ops(onx))


def _scaler_as_standard_ops(onx: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite each ``ai.onnx.ml`` Scaler as ``(x - offset) * scale`` (Sub, Mul).

    skl2onnx exports a StandardScaler as ``ai.onnx.ml:Scaler``, which ONNX Runtime runs on
    CPU only: in a CUDA session it would pull the MLP's first step back to the host with a
    copy either side. Sub and Mul compute the same float32 result and have CUDA kernels.
    """
    graph = onx.graph
    rewritten: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.domain != "ai.onnx.ml" or node.op_type != "Scaler":
            rewritten.append(node)
            continue
        attrs = {a.name: list(helper.get_attribute_value(a)) for a in node.attribute}
        offset = np.asarray(attrs.get("offset", [0.0]), dtype=np.float32)
        scale = np.asarray(attrs.get("scale", [1.0]), dtype=np.float32)
        prefix = node.name or node.output[0]
        graph.initializer.extend(
            [
                numpy_helper.from_array(offset, f"{prefix}_offset"),
                numpy_helper.from_array(scale, f"{prefix}_scale"),
            ]
        )
        centred = f"{prefix}_centred"
        rewritten.append(
            helper.make_node(
                "Sub", [node.input[0], f"{prefix}_offset"], [centred], name=f"{prefix}_sub"
            )
        )
        rewritten.append(
            helper.make_node(
                "Mul", [centred, f"{prefix}_scale"], list(node.output), name=f"{prefix}_mul"
            )
        )
    del graph.node[:]
    graph.node.extend(rewritten)
    return onx


def _positive_class_only(onx: onnx.ModelProto) -> onnx.ModelProto:
    graph = onx.graph
    probs = [o.name for o in graph.output if o.name != "label"]
    if len(probs) != 1:
        raise ValueError(
            f"expected outputs label + probabilities, got {[o.name for o in graph.output]}"
        )
    index_name = "streamscore_positive_class"
    graph.initializer.append(numpy_helper.from_array(np.array(1, dtype=np.int64), index_name))
    # Gather with a scalar index drops the class axis: [N, 2] -> [N].
    graph.node.append(
        helper.make_node("Gather", [probs[0], index_name], [OUTPUT_NAME], axis=1, name="score")
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N"]))
    _prune(graph)
    return onx


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes (and initializers) no graph output depends on."""
    needed = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            keep.append(node)
            needed.update(node.input)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def stamp(
    onx: onnx.ModelProto,
    *,
    name: str,
    version: str,
    feature_service: str,
    n_features: int,
    variant: str | None = None,
) -> bytes:
    """Write streamscore metadata into the model, check it and serialise it."""
    props = {
        "name": name,
        "version": version,
        "feature_service": feature_service,
        "n_features": str(n_features),
    }
    if variant is not None:
        props["variant"] = variant
    del onx.metadata_props[:]
    for key, value in props.items():
        entry = onx.metadata_props.add()
        entry.key, entry.value = f"{META_PREFIX}{key}", value
    onx.graph.name = f"{name}-{version}"  # converters put a random uuid here
    onx.doc_string = f"streamscore fraud model {name}-{version} on {feature_service}"
    onnx.checker.check_model(onx, full_check=True)
    return bytes(onx.SerializeToString(deterministic=True))
