"""``streamscore bench scorer``: rows/s of the Scorer per model kind, provider and batch size.

Trains a LightGBM (200 trees) and a 64-32 MLP on synthetic data with ~120 features in a
temporary folder, then times ``Scorer.score`` (defaults for missing values included) on
CPU, and on the GPU too when ONNX Runtime actually runs one. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np

from streams.scoring.providers import CPU, GPU_PROVIDERS
from streams.scoring.scorer import Scorer
from streams.scoring.training import import_training_package

DEFAULT_BATCH_SIZES = (1, 64, 1024, 8192)
KINDS: dict[str, dict[str, Any]] = {
    "lightgbm": {"n_estimators": 200},
    # Few epochs: the benchmark times inference, and the 64-32 shape is what costs.
    "mlp": {"hidden_layers": (64, 32), "max_iter": 8},
}


def _time_case(scorer: Scorer, x: np.ndarray, seconds: float) -> dict[str, float]:
    scorer.score(x)  # warm this shape
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        scorer.score(x)
        latencies.append(time.perf_counter() - start)
        if start + latencies[-1] >= deadline and len(latencies) >= 3:
            break
    total = sum(latencies)
    latencies.sort()
    return {
        "rows_per_s": len(x) * len(latencies) / total,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1e3,
        "calls": float(len(latencies)),
    }


def run(
    settings: Any,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    seconds_per_case: float = 1.0,
    *,
    n_features: int = 120,
    train_rows: int = 20_000,
    kinds: Sequence[str] = tuple(KINDS),
) -> list[dict[str, Any]]:
    """One dict per (kind, provider, batch size): rows/s, p50/p99 ms per call.

    CPU always; ``settings.providers`` as well when it actually puts the session on a GPU.
    Threads: ``settings.intra_op_threads``.
    """
    models = import_training_package(settings.models_dir)
    spec = models.synthetic_feature_service(n_features)
    rng = np.random.default_rng(0)
    largest = rng.normal(size=(max(batch_sizes), n_features)).astype(np.float32)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="streamscore-bench-") as tmp:
        for kind in kinds:
            trained = models.train_synthetic(
                Path(tmp), kind, spec=spec, rows=train_rows, **KINDS[kind]
            )
            scorers = [
                Scorer.load(
                    trained.onnx_path,
                    spec,
                    providers="cpu",
                    intra_op_threads=settings.intra_op_threads,
                )
            ]
            if settings.providers != "cpu":
                other = Scorer.load(
                    trained.onnx_path,
                    spec,
                    providers=settings.providers,
                    intra_op_threads=settings.intra_op_threads,
                )
                if other.provider in GPU_PROVIDERS:
                    scorers.append(other)
            for scorer in scorers:
                for batch in batch_sizes:
                    timing = _time_case(scorer, largest[:batch], seconds_per_case)
                    results.append(
                        {
                            "kind": kind,
                            "provider": scorer.provider,
                            "batch_size": batch,
                            "threads": settings.intra_op_threads,
                            "features": n_features,
                            **timing,
                        }
                    )
    return results


def crossover(results: Sequence[dict[str, Any]]) -> dict[str, int | None]:
    """Per kind: the smallest batch size at which a GPU provider beats CPU on rows/s."""
    out: dict[str, int | None] = {}
    for kind in {r["kind"] for r in results}:
        cpu = {
            r["batch_size"]: r["rows_per_s"]
            for r in results
            if r["kind"] == kind and r["provider"] == CPU
        }
        gpu = {
            r["batch_size"]: r["rows_per_s"]
            for r in results
            if r["kind"] == kind and r["provider"] in GPU_PROVIDERS
        }
        if gpu:
            wins = [b for b in sorted(gpu) if b in cpu and gpu[b] >= cpu[b]]
            out[kind] = wins[0] if wins else None
    return out


@click.command("scorer")
@click.option("--seconds", default=1.0, show_default=True, help="Timing per case.")
@click.option("--batch-sizes", default="1,64,1024,8192", show_default=True)
@click.option("--features", "n_features", default=120, show_default=True)
@click.pass_obj
def scorer(settings: Any, seconds: float, batch_sizes: str, n_features: int) -> None:
    """Rows/s of LightGBM (200 trees) and MLP (64-32) scoring per batch size and provider."""
    from rich.console import Console
    from rich.table import Table

    sizes = tuple(int(s) for s in batch_sizes.split(","))
    results = run(settings, sizes, seconds, n_features=n_features)
    table = Table(
        "kind",
        "provider",
        "batch",
        "rows/s",
        "p50 ms/call",
        "p99 ms/call",
        title=f"Scorer, {n_features} features, intra_op={settings.intra_op_threads}",
    )
    for r in results:
        table.add_row(
            r["kind"],
            r["provider"].removesuffix("ExecutionProvider"),
            str(r["batch_size"]),
            f"{r['rows_per_s']:,.0f}",
            f"{r['p50_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
        )
    console = Console()
    console.print(table)
    points = crossover(results)
    if not points:
        console.print("GPU: no GPU provider in use (ONNX Runtime runs on CPU); CPU numbers only")
    for kind, batch in sorted(points.items()):
        where = f"batch >= {batch}" if batch else "none of the batch sizes tried"
        console.print(f"{kind}: GPU beats CPU at {where}")
