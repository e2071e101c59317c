"""``streamscore bench scorer``: rows/s of the Scorer per model variant, provider and batch size.

Trains a LightGBM (200 trees) and a 64-32 MLP on synthetic data with ~120 features in a
temporary folder, then times ``Scorer.score`` (defaults for missing values included) for
each variant: ``lightgbm-trees`` (TreeEnsemble operator), ``lightgbm-tensor`` (plain
tensor operators, ``models/tensorise.py``) and ``mlp``; on CPU, and on the GPU too when
ONNX Runtime actually runs one. Per model kind, ``crossover_batch`` is the smallest batch
size from which the GPU variant on the GPU beats the CPU variant on CPU at every larger
size tried: the value for STREAMSCORE_GPU_CROSSOVER_ROWS. Prints numbers; asserts nothing.
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
import orjson

from streams.scoring.metadata import TENSOR_VARIANT, TREES_VARIANT
from streams.scoring.providers import GPU_PROVIDERS
from streams.scoring.scorer import Scorer, choose_providers
from streams.scoring.training import import_training_package
from streams.scoring.variants import cpu_variant, gpu_variant

__all__ = ["DEFAULT_BATCH_SIZES", "VARIANTS", "crossover", "run", "scorer"]

DEFAULT_BATCH_SIZES = (64, 256, 1024, 4096, 16384)
KINDS: dict[str, dict[str, Any]] = {
    "lightgbm": {"n_estimators": 200},
    # Few epochs: the benchmark times inference, and the 64-32 shape is what costs.
    "mlp": {"hidden_layers": (64, 32), "max_iter": 8},
}
# Benchmark variant name -> (model kind, the artifact's variant; None: its only one).
VARIANTS: dict[str, tuple[str, str | None]] = {
    "lightgbm-trees": ("lightgbm", TREES_VARIANT),
    "lightgbm-tensor": ("lightgbm", TENSOR_VARIANT),
    "mlp": ("mlp", None),
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
    variants: Sequence[str] = tuple(VARIANTS),
) -> dict[str, Any]:
    """Rows/s and p50/p99 ms per call for each (variant, provider, batch size), and the
    crossover per model kind.

    CPU always; ``settings.providers`` as well when it actually puts the session on a GPU.
    Threads: ``settings.intra_op_threads``.
    """
    models = import_training_package(settings.models_dir)
    spec = models.synthetic_feature_service(n_features)
    rng = np.random.default_rng(0)
    largest = rng.normal(size=(max(batch_sizes), n_features)).astype(np.float32)
    results: list[dict[str, Any]] = []
    gpu_reason = _gpu_reason(settings.providers)
    gpu_possible = settings.providers != "cpu" and (
        choose_providers(settings.providers).providers[0] in GPU_PROVIDERS
    )
    settings_list = ["cpu", settings.providers] if gpu_possible else ["cpu"]
    served: dict[str, dict[str, str]] = {}  # kind -> {"cpu": variant, "gpu": variant}
    with tempfile.TemporaryDirectory(prefix="streamscore-bench-") as tmp:
        trained: dict[str, Path] = {}
        for name in variants:
            kind, variant = VARIANTS[name]
            if kind not in trained:
                trained[kind] = models.train_synthetic(
                    Path(tmp), kind, spec=spec, rows=train_rows, **KINDS[kind]
                ).onnx_path
            for setting in settings_list:
                scorer = Scorer.load(
                    trained[kind],
                    spec,
                    providers=setting,
                    intra_op_threads=settings.intra_op_threads,
                    variant=variant,
                )
                # on_gpu: every compute node on the GPU (a CUDA session still runs the
                # tree-ensemble operator on CPU), so only those rows count as GPU rows.
                if setting != "cpu" and not scorer.on_gpu:
                    continue  # the CPU row is already measured
                served[kind] = {
                    "cpu": cpu_variant(scorer.metadata),
                    "gpu": gpu_variant(scorer.metadata),
                }
                for batch in batch_sizes:
                    timing = _time_case(scorer, largest[:batch], seconds_per_case)
                    results.append(
                        {
                            "variant": name,
                            "kind": kind,
                            "model_variant": scorer.variant,
                            "provider": scorer.provider,
                            "on_gpu": bool(scorer.on_gpu),
                            "batch_size": batch,
                            "threads": settings.intra_op_threads,
                            "features": n_features,
                            **timing,
                        }
                    )
    return {
        "features": n_features,
        "threads": settings.intra_op_threads,
        "seconds_per_case": seconds_per_case,
        "batch_sizes": list(batch_sizes),
        "providers_setting": settings.providers,
        "gpu": next((r["provider"] for r in results if r["on_gpu"]), None),
        "results": results,
        "crossover": crossover(results, served, gpu_reason),
    }


def _gpu_reason(setting: str) -> str:
    """Why no GPU row may appear (used only when none does)."""
    if setting == "cpu":
        return "STREAMSCORE_PROVIDERS=cpu: the GPU was not tried"
    choice = choose_providers(setting)
    if choice.skipped:
        return choice.skipped
    return f"ONNX Runtime ran every session on CPU (STREAMSCORE_PROVIDERS={setting})"


def crossover(
    results: Sequence[dict[str, Any]],
    served: dict[str, dict[str, str]],
    gpu_reason: str,
) -> dict[str, dict[str, Any]]:
    """Per model kind: ``crossover_batch``, the smallest batch size from which the GPU
    variant on the GPU (rows with ``on_gpu``) has at least the rows/s of the CPU variant
    on CPU at that and every larger size measured, or None with a ``reason``.

    ``served`` names, per kind, the variant each side runs (``cpu`` and ``gpu``), as the
    Scorer's auto mode would.
    """
    out: dict[str, dict[str, Any]] = {}
    for kind, sides in sorted(served.items()):
        cpu = {
            r["batch_size"]: r["rows_per_s"]
            for r in results
            if r["kind"] == kind and r["model_variant"] == sides["cpu"] and not r["on_gpu"]
        }
        gpu = {
            r["batch_size"]: r["rows_per_s"]
            for r in results
            if r["kind"] == kind and r["model_variant"] == sides["gpu"] and r["on_gpu"]
        }
        entry: dict[str, Any] = {"cpu_variant": sides["cpu"], "gpu_variant": sides["gpu"]}
        sizes = sorted(set(cpu) & set(gpu))
        if not gpu:
            out[kind] = {**entry, "crossover_batch": None, "reason": f"no GPU ran: {gpu_reason}"}
            continue
        if not sizes:
            out[kind] = {
                **entry,
                "crossover_batch": None,
                "reason": f"variant {sides['cpu']} was not measured on CPU",
            }
            continue
        wins = [b for i, b in enumerate(sizes) if all(gpu[s] >= cpu[s] for s in sizes[i:])]
        if wins:
            out[kind] = {**entry, "crossover_batch": wins[0], "reason": None}
        else:
            out[kind] = {
                **entry,
                "crossover_batch": None,
                "reason": f"the GPU is slower at every batch size up to {sizes[-1]}",
            }
    return out


@click.command("scorer")
@click.option("--seconds", default=1.0, show_default=True, help="Timing per case.")
@click.option(
    "--batch-sizes",
    default=",".join(str(b) for b in DEFAULT_BATCH_SIZES),
    show_default=True,
    help="Comma-separated batch sizes.",
)
@click.option("--features", "n_features", default=120, show_default=True)
@click.option(
    "--variants",
    "variant_names",
    default=",".join(VARIANTS),
    show_default=True,
    help="Comma-separated: lightgbm-trees, lightgbm-tensor, mlp.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead.")
@click.pass_obj
def scorer(
    settings: Any,
    seconds: float,
    batch_sizes: str,
    n_features: int,
    variant_names: str,
    as_json: bool,
) -> None:
    """Rows/s per model variant, provider and batch size, and the GPU crossover per kind."""
    sizes = tuple(int(s) for s in batch_sizes.split(","))
    chosen = tuple(v.strip() for v in variant_names.split(","))
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        raise click.BadParameter(
            f"unknown variant(s) {unknown}; expected some of {', '.join(VARIANTS)}",
            param_hint="--variants",
        )
    out = run(settings, sizes, seconds, n_features=n_features, variants=chosen)
    if as_json:
        click.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "variant",
        "provider",
        "batch",
        "rows/s",
        "p50 ms/call",
        "p99 ms/call",
        title=f"Scorer, {n_features} features, intra_op={settings.intra_op_threads}",
    )
    for r in out["results"]:
        table.add_row(
            r["variant"],
            r["provider"].removesuffix("ExecutionProvider"),
            str(r["batch_size"]),
            f"{r['rows_per_s']:,.0f}",
            f"{r['p50_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
        )
    console = Console()
    console.print(table)
    for kind, point in out["crossover"].items():
        if point["crossover_batch"] is None:
            console.print(f"{kind}: crossover_batch null ({point['reason']})")
        else:
            console.print(
                f"{kind}: GPU ({point['gpu_variant']}) beats CPU ({point['cpu_variant']}) from "
                f"batch {point['crossover_batch']}: STREAMSCORE_GPU_CROSSOVER_ROWS="
                f"{point['crossover_batch']}"
            )
