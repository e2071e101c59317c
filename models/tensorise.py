"""A LightGBM tree dump as a plain tensor graph that a GPU can run (GEMM strategy).

ONNX Runtime has the ``ai.onnx.ml`` TreeEnsemble operators on CPU only, so the tree-op
export runs on CPU even in a CUDA session. ``tensorise(dump, n_features)`` turns
``Booster.dump_model()`` into a graph made only of standard operators with CUDA kernels
(``CUDA_KERNEL_OPS``), the GEMM strategy of Hummingbird (Nakandala et al., OSDI 2020):

1. every internal node's split feature is gathered and compared with its threshold
   (LightGBM goes left when ``x <= threshold``); each double threshold is rounded down to
   the largest float32 at or below it, so ``x <= t32`` holds exactly when ``x <= t`` does
   for every float32 ``x``;
2. per tree, a [leaves x internal] path matrix (+1 left subtree, -1 right, 0 off the
   path) times the 0/1 decisions counts, per leaf, the left turns taken minus the right
   turns that should not have been; it equals the leaf's number of left ancestors only on
   the leaf the row reaches;
3. that leaf's value is selected, summed over leaves and trees, and put through the
   sigmoid of the binary objective.

Guarantees: same input ``features`` float32 [N, F] and output ``score`` float32 [N] (the
positive-class probability) as the tree-op export, within 1e-5 of the native model
(checked at training time); LightGBM's input and missing-value rules are reproduced:
``|x| <= 1e-35`` reads as 0.0 (its predictor drops such values from a dense row), NaN
compares as 0.0 on ``missing_type None`` nodes, and NaN (or zero) takes the node's default
direction on ``NaN`` (or ``Zero``) nodes. Refused with a ModelError at export time:
categorical splits, linear trees, multiclass or non-binary objectives, random-forest mode.
On CPU this graph is slower than the TreeEnsemble operator (``streamscore bench scorer``
measures both); it is the variant for a GPU.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from streams.errors import ModelError
from streams.scoring.metadata import INPUT_NAME, OUTPUT_NAME

__all__ = ["CUDA_KERNEL_OPS", "TENSOR_OPSET", "round_down_to_float32", "tensorise"]

TENSOR_OPSET = 17  # LessOrEqual needs >= 16; ONNX Runtime >= 1.20 runs 17 on every provider
# Operators ONNX Runtime's CUDA provider implements for float/bool tensors at this opset
# (docs/OperatorKernels.md, "Operators implemented by CUDAExecutionProvider"). The graph
# uses nothing else, so no node falls back to CPU in a CUDA session.
CUDA_KERNEL_OPS = frozenset(
    {"Transpose", "Gather", "IsNaN", "Abs", "LessOrEqual", "Or", "And", "Where", "Concat",
     "Cast", "MatMul", "Equal", "ReduceSum", "Sigmoid"}
)  # fmt: skip
# LightGBM's kZeroThreshold: |x| <= 1e-35f is zero, to its predictor and on Zero nodes.
_ZERO = np.float32(1e-35)
_MISSING_TYPES = ("None", "Zero", "NaN")


def round_down_to_float32(value: float) -> np.float32:
    """The largest float32 <= ``value`` (LightGBM thresholds are doubles, inputs float32)."""
    if math.isnan(value):
        raise ValueError("a split threshold is NaN")
    with np.errstate(over="ignore"):
        f = np.float32(value)  # round to nearest: may round up, or overflow to inf
    if float(f) > value:
        f = np.nextafter(f, np.float32(-np.inf))
    return np.float32(f)


@dataclass(frozen=True, slots=True)
class _Node:
    feature: int
    threshold: np.float32
    default_left: bool
    missing_type: str


@dataclass(frozen=True, slots=True)
class _Tree:
    nodes: tuple[_Node, ...]
    # Per leaf: its value and the (internal node, went left) pairs on its path.
    leaves: tuple[tuple[float, tuple[tuple[int, bool], ...]], ...]


def _sigmoid_coefficient(dump: Mapping[str, Any]) -> float:
    objective = str(dump.get("objective", ""))
    if dump.get("num_class", 1) != 1 or dump.get("num_tree_per_iteration", 1) != 1:
        raise ModelError(
            f"tensorise: only binary models are supported, this one has "
            f"num_class={dump.get('num_class')} and "
            f"num_tree_per_iteration={dump.get('num_tree_per_iteration')}"
        )
    match = re.fullmatch(r"binary(?: sigmoid:(\S+))?", objective.strip())
    if match is None:
        raise ModelError(
            f"tensorise: objective {objective!r} is not supported; expected 'binary' "
            f"(the fraud models' objective)"
        )
    if dump.get("average_output"):
        raise ModelError("tensorise: random-forest mode (average_output) is not supported")
    return float(match.group(1)) if match.group(1) else 1.0


def _tree(info: Mapping[str, Any], n_features: int) -> _Tree:
    index = info.get("tree_index", "?")
    if info.get("num_cat", 0):
        raise ModelError(
            f"tensorise: tree {index} has {info['num_cat']} categorical splits; the tensor "
            f"variant supports numerical splits only (streamscore features are all numeric)"
        )
    if info.get("is_linear"):
        raise ModelError(f"tensorise: tree {index} is a linear tree (linear_tree=true)")
    nodes: list[_Node] = []
    leaves: list[tuple[float, tuple[tuple[int, bool], ...]]] = []
    # Iterative depth-first walk: num_leaves may make trees deeper than Python's recursion.
    stack: list[tuple[Mapping[str, Any], tuple[tuple[int, bool], ...]]] = [
        (info["tree_structure"], ())
    ]
    while stack:
        node, path = stack.pop()
        if "leaf_value" in node:
            leaves.append((float(node["leaf_value"]), path))
            continue
        where = f"tensorise: tree {index} node {node.get('split_index', '?')}"
        if node.get("decision_type") != "<=":
            raise ModelError(
                f"{where} has decision_type {node.get('decision_type')!r} (a categorical "
                f"split); only numerical '<=' splits are supported"
            )
        missing_type = str(node.get("missing_type", "None"))
        if missing_type not in _MISSING_TYPES:
            raise ModelError(f"{where} has unknown missing_type {missing_type!r}")
        feature = int(node["split_feature"])
        if not 0 <= feature < n_features:
            raise ModelError(f"{where} splits on feature {feature}, the model has {n_features}")
        i = len(nodes)
        nodes.append(
            _Node(
                feature,
                round_down_to_float32(float(node["threshold"])),
                bool(node.get("default_left", True)),
                missing_type,
            )
        )
        # Right pushed first so leaves come out left to right (order is cosmetic).
        stack.append((node["right_child"], (*path, (i, False))))
        stack.append((node["left_child"], (*path, (i, True))))
    return _Tree(tuple(nodes), tuple(leaves))


def tensorise(dump: Mapping[str, Any], n_features: int) -> onnx.ModelProto:
    """``Booster.dump_model()`` of a binary LightGBM → ONNX ``features`` [N, F] → ``score`` [N]."""
    sigmoid = _sigmoid_coefficient(dump)
    if int(dump.get("max_feature_idx", 0)) >= n_features:
        raise ModelError(
            f"tensorise: the model uses feature index {dump['max_feature_idx']}, "
            f"but only {n_features} features are declared"
        )
    trees = [_tree(info, n_features) for info in dump.get("tree_info", [])]
    if not trees:
        raise ModelError("tensorise: the model has no trees")
    n_trees = len(trees)
    # Pad every tree to the widest one; padded nodes have all-zero path rows and padded
    # leaves an unreachable left count, so neither changes the result. At least one node
    # keeps the shapes non-empty when every tree is a single leaf.
    n_internal = max(1, *(len(t.nodes) for t in trees))
    n_leaves = max(len(t.leaves) for t in trees)
    feature = np.zeros((n_trees, n_internal), dtype=np.int64)
    threshold = np.zeros((n_trees, n_internal, 1), dtype=np.float32)
    default_left = np.zeros((n_trees, n_internal, 1), dtype=bool)
    # Row of the missing-flag matrix each NaN or Zero node reads: f (x_f is NaN) or F + f
    # (x_f is zero); ``uses_flag`` masks the rest, None nodes, whose NaN becomes 0.0.
    flag_row = np.zeros((n_trees, n_internal), dtype=np.int64)
    uses_flag = np.zeros((n_trees, n_internal, 1), dtype=bool)
    paths = np.zeros((n_trees, n_leaves, n_internal), dtype=np.float32)
    left_turns = np.full((n_trees, n_leaves, 1), -1.0, dtype=np.float32)
    values = np.zeros((n_trees, n_leaves, 1), dtype=np.float32)
    for t, tree in enumerate(trees):
        for i, node in enumerate(tree.nodes):
            feature[t, i] = node.feature
            threshold[t, i, 0] = node.threshold
            default_left[t, i, 0] = node.default_left
            if node.missing_type != "None":
                uses_flag[t, i, 0] = True
                flag_row[t, i] = node.feature + (n_features if node.missing_type == "Zero" else 0)
        for leaf, (value, path) in enumerate(tree.leaves):
            for i, left in path:
                paths[t, leaf, i] = 1.0 if left else -1.0
            left_turns[t, leaf, 0] = sum(1 for _, left in path if left)
            values[t, leaf, 0] = value * sigmoid
    return _graph(
        n_features,
        feature=feature,
        threshold=threshold,
        default_left=default_left,
        missing=(flag_row, uses_flag) if uses_flag.any() else None,
        paths=paths,
        left_turns=left_turns,
        values=values,
    )


def _graph(
    n_features: int,
    *,
    feature: NDArray[np.int64],
    threshold: NDArray[np.float32],
    default_left: NDArray[np.bool_],
    missing: tuple[NDArray[np.int64], NDArray[np.bool_]] | None,
    paths: NDArray[np.float32],
    left_turns: NDArray[np.float32],
    values: NDArray[np.float32],
) -> onnx.ModelProto:
    """Shapes: T trees, I internal nodes, L leaves per tree (padded), N rows."""
    init: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, array: NDArray[Any]) -> str:
        init.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    # [N, F] -> [F, N]: gathering whole rows of N values is one contiguous copy per node.
    xt = node("Transpose", [INPUT_NAME], "x_t", perm=[1, 0])
    nan = node("IsNaN", [xt], "x_nan")
    zero = const("zero", np.array(0.0, dtype=np.float32))
    # LightGBM's predictor drops |x| <= 1e-35 from a dense row (it reads back as 0.0) and
    # compares 0.0 instead of NaN on every node that is not a NaN node (NaN nodes read
    # the flag below, never the value).
    tiny = node(
        "LessOrEqual", [node("Abs", [xt], "x_abs"), const("zero_threshold", _ZERO)], "x_tiny"
    )
    as_zero = node("Or", [nan, tiny], "x_as_zero")
    x0 = node("Where", [as_zero, zero, xt], "x_zeroed")
    xg = node("Gather", [x0, const("split_feature", feature)], "x_split", axis=0)  # [T, I, N]
    go_left = node("LessOrEqual", [xg, const("threshold", threshold)], "go_left")
    decisions = node("Cast", [go_left], "decisions", to=TensorProto.FLOAT)  # [T, I, N]
    if missing is not None:
        # Missing flags [2F, N]: x_f is NaN (rows 0..F-1), x_f is zero (rows F..2F-1; NaN
        # and tiny values count as zero there, as LightGBM zeroes them first).
        flag_row, uses_flag = missing
        flags = node("Concat", [nan, as_zero], "missing_flags", axis=0)
        gathered = node("Gather", [flags, const("missing_row", flag_row)], "x_missing", axis=0)
        is_missing = node("And", [gathered, const("uses_flag", uses_flag)], "missing")
        # Where on float: ONNX Runtime's CPU provider has no bool Where.
        decisions = node(
            "Where",
            [is_missing, const("default_left", default_left.astype(np.float32)), decisions],
            "decisions_missing",
        )
    # 0/1 decisions times a +-1/0 path matrix: small integers, exact in float32 and in the
    # TF32 tensor cores a CUDA MatMul may use (they keep 10 mantissa bits and add in fp32).
    counts = node("MatMul", [const("paths", paths), decisions], "left_turns")  # [T, L, N]
    reached = node("Equal", [counts, const("leaf_left_turns", left_turns)], "reached")
    # Leaf values are selected, not multiplied in a MatMul: TF32 would round them.
    picked = node("Where", [reached, const("leaf_value", values), zero], "leaf_values")
    axes = const("tree_leaf_axes", np.array([0, 1], dtype=np.int64))
    raw = node("ReduceSum", [picked, axes], "raw_score", keepdims=0)  # [N]
    node("Sigmoid", [raw], OUTPUT_NAME)
    graph = helper.make_graph(
        nodes,
        "lightgbm_tensor",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N"])],
        init,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", TENSOR_OPSET)], producer_name="streamscore"
    )
    model.ir_version = 8  # readable by ONNX Runtime >= 1.14
    used = {n.op_type for n in model.graph.node}
    if not used <= CUDA_KERNEL_OPS:  # pragma: no cover - a guard on this module's own code
        raise AssertionError(f"ops without a CUDA kernel: {sorted(used - CUDA_KERNEL_OPS)}")
    return model
