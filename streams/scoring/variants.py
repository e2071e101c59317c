"""Which model variant runs on which execution provider, and which session scores a batch.

An artifact's main variant (``<id>.onnx``) is what CPU runs: for LightGBM the
TreeEnsemble-operator graph, fastest there and CPU-only in ONNX Runtime. Its ``tensor``
variant, when there is one, is what a GPU runs (standard operators with CUDA kernels).
A model with one variant (the MLP) runs it everywhere.

Guarantees (``plan_sessions``):

- no GPU provider can initialise: one CPU session on the CPU variant, as before variants;
- ``cpu``: the same;
- ``cuda``/``tensorrt`` with a GPU: one GPU session on the GPU variant, every batch;
- ``auto`` with a GPU: two sessions, the GPU variant on the GPU for batches of at least
  ``gpu_crossover_rows`` rows (STREAMSCORE_GPU_CROSSOVER_ROWS, measured by
  ``streamscore bench scorer``) and the CPU variant on CPU below it, so auto is never
  slower than CPU-only at the measured sizes; with no crossover set, auto stays on CPU
  (one session), since nothing says where the GPU starts to pay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streams.errors import ModelError
from streams.scoring.metadata import TENSOR_VARIANT, ModelMetadata
from streams.scoring.providers import CPU, GPU_PROVIDERS

__all__ = ["SessionPlan", "cpu_variant", "gpu_variant", "plan_sessions", "routes_to_gpu"]


def cpu_variant(metadata: ModelMetadata) -> str:
    """The variant to run on CPU: the main one."""
    return metadata.main_variant


def gpu_variant(metadata: ModelMetadata) -> str:
    """The variant to run on a GPU: ``tensor`` where the model has one, else the main one."""
    return TENSOR_VARIANT if TENSOR_VARIANT in metadata.variants else metadata.main_variant


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """The sessions a Scorer opens.

    ``variant`` on ``providers`` is the main session. With ``gpu_from_rows`` set, the main
    session is on a GPU and takes batches of at least that many rows; a second session
    runs ``cpu_variant`` on CPU for smaller ones. ``cpu_variant`` is also what the main
    session falls back to when ONNX Runtime puts it on CPU after all.
    """

    variant: str
    providers: tuple[str, ...]
    cpu_variant: str
    gpu_from_rows: int | None = None
    note: str | None = None  # why, for the model's log line

    @property
    def on_gpu(self) -> bool:
        return self.providers[0] in GPU_PROVIDERS


def plan_sessions(
    metadata: ModelMetadata,
    setting: str,
    providers: Sequence[str],
    *,
    gpu_crossover_rows: int | None = None,
    variant: str | None = None,
) -> SessionPlan:
    """The sessions for ``setting`` (STREAMSCORE_PROVIDERS), given ``providers``: the ones
    that can initialise here, best first (``choose_providers(setting).providers``).

    ``variant`` pins one variant on ``providers`` (benchmarks, GPU checks), one session.
    """
    cpu = cpu_variant(metadata)
    gpu = gpu_variant(metadata)
    chosen = tuple(providers)
    if variant is not None:
        if variant not in metadata.variant_names:
            raise ModelError(
                f"model {metadata.model_id} has no variant {variant!r}; it has "
                f"{', '.join(metadata.variant_names)}"
            )
        return SessionPlan(variant, chosen, variant, note=f"variant {variant} pinned")
    if not chosen or chosen[0] not in GPU_PROVIDERS:
        return SessionPlan(cpu, (CPU,), cpu)
    if setting.lower() != "auto":
        return SessionPlan(gpu, chosen, cpu)
    if gpu_crossover_rows is None:
        return SessionPlan(
            cpu,
            (CPU,),
            cpu,
            note=(
                f"{chosen[0]} is available but STREAMSCORE_GPU_CROSSOVER_ROWS is unset, so "
                f"auto scores on CPU (measure it with `streamscore bench scorer`)"
            ),
        )
    return SessionPlan(
        gpu,
        chosen,
        cpu,
        gpu_from_rows=gpu_crossover_rows,
        note=(
            f"batches of {gpu_crossover_rows}+ rows run variant {gpu} on {chosen[0]}, "
            f"smaller ones variant {cpu} on {CPU}"
        ),
    )


def routes_to_gpu(rows: int, gpu_from_rows: int | None) -> bool:
    """Whether a batch of ``rows`` goes to the GPU session of a two-session scorer."""
    return gpu_from_rows is not None and rows >= gpu_from_rows
