"""Placement: node providers from ONNX Runtime session profiles (a real CPU one and a
GPU-shaped one), cuda_capable from graphs, the Scorer's truthful provider, the gauges."""

from __future__ import annotations

import gc
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import synthetic_feature_service, train_synthetic
from streams.errors import ModelError
from streams.monitoring.metrics import WorkerMetrics
from streams.scoring import ModelSet, Scorer
from streams.scoring.cuda_kernels import CUDA_KERNELS
from streams.scoring.placement import (
    OpType,
    Placement,
    Profiling,
    cuda_kernel_gaps,
    node_runs,
    placement_of,
    read_profile,
)
from streams.scoring.providers import CPU, CUDA
from streams.settings import Settings

SPEC = synthetic_feature_service(20)
TREES = OpType("ai.onnx.ml", "TreeEnsembleClassifier", 1)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("placement")
    return {
        "lightgbm": train_synthetic(root, "lightgbm", n_estimators=8).onnx_path,
        "mlp": train_synthetic(root, "mlp", max_iter=3).onnx_path,
    }


def _profile(model: bytes, runs: int = 2) -> list[dict[str, Any]]:
    """The events of a real CPU session profile after ``runs`` runs (own folder, removed)."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = str(Path(folder) / "t")
        session = ort.InferenceSession(model, options, providers=[CPU])
        for _ in range(runs):
            session.run(None, {"features": np.zeros((16, 20), dtype=np.float32)})
        return read_profile(session.end_profiling())


def _node(name: str, op: str, provider: str, dur: int) -> dict[str, Any]:
    """One node run as ONNX Runtime writes it (cat Node, <name>_kernel_time, args)."""
    return {
        "cat": "Node", "pid": 1, "tid": 1, "dur": dur, "ts": 100, "ph": "X",
        "name": f"{name}_kernel_time",
        "args": {"op_name": op, "provider": provider, "node_index": "0"},
    }  # fmt: skip


# A CUDA session of a graph with one CPU-only node, recorded in the documented format:
# session events, fences without a provider, node runs, and the "Kernel" events a CUDA
# build adds for GPU kernels (ignored: they are not nodes).
GPU_RUN = [
    {"cat": "Node", "name": "matmul_fence_before", "dur": 0, "args": {"op_name": "MatMul"}},
    _node("Memcpy", "MemcpyFromHost", CUDA, 3),
    _node("matmul", "MatMul", CUDA, 40),
    {"cat": "Kernel", "name": "ampere_sgemm_32x32", "dur": 900, "args": {"op_name": "MatMul"}},
    _node("relu", "Relu", CUDA, 10),
    _node("Memcpy_token_1", "MemcpyToHost", CUDA, 4),
    _node("trees", "TreeEnsembleClassifier", CPU, 300),
    _node("Memcpy_token_2", "MemcpyFromHost", CUDA, 3),
    _node("score", "Gather", CUDA, 5),
]
GPU_PROFILE = [
    {"cat": "Session", "name": "session_initialization", "dur": 5000, "args": {}},
    *GPU_RUN,
    *GPU_RUN,  # a second run: same nodes, durations add up
    {"cat": "Session", "name": "model_run", "dur": 700, "args": {}},
]


def test_a_real_cpu_profile_names_every_node_and_its_provider(
    artifacts: dict[str, Path],
) -> None:
    model = artifacts["lightgbm"].read_bytes()
    runs = node_runs(_profile(model, runs=3))
    ops = [r.op_type for r in runs]
    assert "TreeEnsembleClassifier" in ops and "Gather" in ops
    assert len(ops) == len({r.name for r in runs})  # three runs, each node once
    assert {r.provider for r in runs} == {CPU}
    assert sum(r.dur_us for r in runs) > 0
    where = placement_of(runs, [CPU], cuda_kernel_gaps(model))
    assert where.provider == CPU and not where.partial and not where.on_gpu
    assert dict(where.nodes_by_provider) == {CPU: len(runs)}
    assert where.share_by_provider[CPU] == pytest.approx(1.0)
    assert not where.cuda_capable and where.without_cuda_kernel == (TREES,)


def test_a_gpu_shaped_profile_is_reported_as_partial() -> None:
    where = placement_of(node_runs(GPU_PROFILE), [CUDA, CPU])
    assert dict(where.nodes_by_provider) == {CUDA: 3, CPU: 1}
    assert where.copies == 3  # Memcpy nodes are data movement, not compute
    assert where.provider == "CUDAExecutionProvider (partial: 1 of 4 nodes on CPU)"
    assert where.partial and where.on_gpu and where.primary == CUDA
    # Node time: CPU 2 x 300 µs of 2 x 355 (the Kernel event's 900 µs is not a node).
    assert where.share_by_provider[CPU] == pytest.approx(600 / 710)
    assert where.share_by_provider[CUDA] == pytest.approx(110 / 710)
    assert where.to_dict()["nodes_by_provider"] == {CPU: 1, CUDA: 3}


def test_a_cuda_session_running_every_node_on_cpu_says_cpu() -> None:
    # The LightGBM tree export in a CUDA session: get_providers()[0] is CUDA, nothing runs there.
    events = [_node("trees", "TreeEnsembleClassifier", CPU, 80), _node("score", "Gather", CPU, 2)]
    where = placement_of(node_runs(events), [CUDA, CPU], [TREES])
    assert where.provider == CPU and not where.partial and not where.on_gpu
    assert "no CUDA kernel for ai.onnx.ml:TreeEnsembleClassifier" in where.describe()


def test_all_on_cuda_says_cuda_and_zero_durations_share_by_node_count() -> None:
    events = [_node("a", "MatMul", CUDA, 0), _node("b", "Relu", CUDA, 0)]
    where = placement_of(node_runs(events), [CUDA, CPU])
    assert where.provider == CUDA and where.cuda_capable
    assert dict(where.share_by_provider) == {CUDA: 1.0}
    unmeasured = placement_of(node_runs([]), [CUDA, CPU])
    assert unmeasured.provider == "CUDAExecutionProvider (placement not measured)"


def test_placement_is_frozen() -> None:
    where = Placement((CPU,), {CPU: 2}, {CPU: 1.0})
    with pytest.raises(AttributeError):
        where.copies = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        where.nodes_by_provider[CUDA] = 1  # type: ignore[index]


def test_a_broken_profile_is_a_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "p.json"
    bad.write_text("[{")
    with pytest.raises(ModelError, match=str(bad)):
        read_profile(bad)
    bad.write_text('{"cat": "Node"}')
    with pytest.raises(ModelError, match="not a JSON array"):
        read_profile(bad)


def test_profiling_leaves_no_file_and_stops_after_finish(artifacts: dict[str, Path]) -> None:
    model = artifacts["mlp"].read_bytes()
    options = ort.SessionOptions()
    probe = Profiling(options)
    assert probe.folder.is_dir()
    session = ort.InferenceSession(model, options, providers=[CPU])
    session.run(None, {"features": np.zeros((4, 20), dtype=np.float32)})
    where = probe.finish(session, model)
    assert not probe.folder.exists()
    assert where.compute_nodes > 0 and where.provider == CPU
    session.run(None, {"features": np.zeros((4, 20), dtype=np.float32)})
    assert session.end_profiling() == ""  # the profiler is off: later runs are not recorded
    # A probe dropped without finish (a session that failed to load) removes its folder too.
    dropped = Profiling(ort.SessionOptions())
    folder = dropped.folder
    del dropped
    gc.collect()
    assert not folder.exists()


def _graph(nodes: list[onnx.NodeProto], opsets: dict[str, int]) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [weight],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()]
    )


def test_cuda_capable_from_graphs(artifacts: dict[str, Path]) -> None:
    assert cuda_kernel_gaps(artifacts["lightgbm"].read_bytes()) == (TREES,)
    # skl2onnx scales the MLP's input with ai.onnx.ml Scaler (CPU-only in ONNX Runtime); the
    # export rewrites it as Sub and Mul, so the whole MLP has CUDA kernels.
    assert cuda_kernel_gaps(artifacts["mlp"].read_bytes()) == ()
    matmul = _graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        {"": 17},
    )
    assert cuda_kernel_gaps(matmul) == ()
    # A CPU-only operator inside an If branch is found too.
    branch = helper.make_graph(
        [helper.make_node("Scaler", ["x"], ["y"], domain="ai.onnx.ml", scale=[2.0])],
        "then",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    nested = _graph(
        [
            helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
            helper.make_node("Cast", ["s"], ["c"], to=TensorProto.BOOL),
            helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch),
        ],
        {"": 17, "ai.onnx.ml": 1},
    )
    assert [str(g) for g in cuda_kernel_gaps(nested)] == ["ai.onnx.ml:Scaler"]


def test_cuda_kernels_are_matched_on_opset_versions() -> None:
    assert CUDA_KERNELS[("", "Scatter")] == ((9, 10),)  # replaced by ScatterElements in 11

    def scatter(opset: int) -> onnx.ModelProto:
        node = helper.make_node("Scatter", ["x", "i", "u"], ["y"])
        model = _graph([node], {"": opset})
        model.graph.input.extend(
            [
                helper.make_tensor_value_info("i", TensorProto.INT64, ["N", 4]),
                helper.make_tensor_value_info("u", TensorProto.FLOAT, ["N", 4]),
            ]
        )
        return model

    assert cuda_kernel_gaps(scatter(10)) == ()
    assert cuda_kernel_gaps(scatter(11)) == (OpType("", "Scatter", 11),)


def _profile_folders() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("streamscore-profile-*")}


def test_the_scorer_reports_where_its_nodes_run(
    artifacts: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="streams.scoring")
    before = _profile_folders()
    scorer = Scorer.load(artifacts["lightgbm"], SPEC, providers="cpu")
    assert _profile_folders() == before  # no profile left behind
    assert scorer.provider == CPU and scorer.placement.provider == CPU
    assert dict(scorer.placement.nodes_by_provider) == {CPU: scorer.placement.compute_nodes}
    assert not scorer.placement.cuda_capable
    line = next(r.getMessage() for r in caplog.records if scorer.model_id in r.getMessage())
    assert "no CUDA kernel for ai.onnx.ml:TreeEnsembleClassifier" in line
    assert f"{scorer.placement.compute_nodes} compute nodes" in line
    # Scoring after the warm-up is not profiled (the profiler is off).
    scorer.score(np.zeros((8, 20), dtype=np.float32))
    assert scorer.session.end_profiling() == ""


def test_models_rows_carry_the_placement(artifacts: dict[str, Path], tmp_path: Path) -> None:
    from streams.agents.score import MODEL_COLUMNS, model_rows

    scorer = Scorer.load(artifacts["mlp"], SPEC, providers="cpu")
    (row,) = model_rows(ModelSet(scorer), Settings(models_dir=tmp_path))
    named = dict(zip(MODEL_COLUMNS, row, strict=True))
    assert named["provider"] == CPU
    assert named["nodes_by_provider"] == {CPU: scorer.placement.compute_nodes}
    assert named["compute_share_by_provider"] == {CPU: pytest.approx(1.0)}
    assert named["cuda_capable"] is True
    assert named["without_cuda_kernel"] == []


def test_metrics_expose_nodes_share_and_capability_per_model() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    metrics = WorkerMetrics()
    partial = placement_of(node_runs(GPU_PROFILE), [CUDA, CPU])
    metrics.set_models(
        [("m-1", "champion", partial.provider), ("m-2", "shadow", CPU)],
        {"m-1": partial, "m-2": Placement((CPU,), {CPU: 13}, {CPU: 1.0}, 0, (TREES,))},
    )
    text = metrics.exposition().decode()
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert found[("streamscore_model_nodes", (("model_version", "m-1"), ("provider", CUDA)))] == 3
    assert found[("streamscore_model_nodes", (("model_version", "m-1"), ("provider", CPU)))] == 1
    assert found[("streamscore_model_nodes", (("model_version", "m-2"), ("provider", CPU)))] == 13
    share = ("streamscore_model_compute_share", (("model_version", "m-1"), ("provider", CPU)))
    assert found[share] == pytest.approx(600 / 710)
    assert found[("streamscore_model_cuda_capable", (("model_version", "m-1"),))] == 1
    assert found[("streamscore_model_cuda_capable", (("model_version", "m-2"),))] == 0
    info = (
        "streamscore_model_info",
        (
            ("model_version", "m-1"),
            ("provider", "CUDAExecutionProvider (partial: 1 of 4 nodes on CPU)"),
            ("role", "champion"),
        ),
    )
    assert found[info] == 1
    # A swap replaces the set: the retired model's placement series are gone.
    metrics.set_models([("m-3", "champion", CPU)], {"m-3": Placement((CPU,), {CPU: 3}, {CPU: 1.0})})
    text = metrics.exposition().decode()
    assert 'streamscore_model_nodes{model_version="m-1"' not in text
    assert (
        'streamscore_model_nodes{model_version="m-3",provider="CPUExecutionProvider"} 3.0' in text
    )
