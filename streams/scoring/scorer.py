"""Scorer: one checked ONNX artifact in one ONNX Runtime session, scoring float32 batches.

The session is built from the artifact's in-memory bytes (the ones ``load_artifact``
hashed), never from a path, so ONNX Runtime reads no file of its own.

Which execution provider: :func:`choose_providers` asks for a GPU provider only when it
can initialise here (the driver answers, a device exists, the CUDA libraries it links
load), so a CPU machine with ``onnxruntime-gpu`` installed gets no red "Failed to load
library libonnxruntime_providers_cuda.so" lines; each model then reports the provider it
runs on in one log line.

Which variant of the model each session runs, and when a scorer holds two (auto mode
with a GPU: the GPU for batches at or above STREAMSCORE_GPU_CROSSOVER_ROWS, CPU below):
:mod:`streams.scoring.variants`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import logging
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from streams.errors import ModelError
from streams.features.spec import FeatureServiceSpec
from streams.scoring.artifact import Artifact, load_artifact
from streams.scoring.decide import Decisions, decide
from streams.scoring.metadata import INPUT_NAME, OUTPUT_NAME, ModelMetadata
from streams.scoring.placement import Placement, Profiles
from streams.scoring.providers import CPU, CUDA, GPU_PROVIDERS, TENSORRT, select_providers
from streams.scoring.variants import SessionPlan, plan_sessions, routes_to_gpu

__all__ = ["ProviderChoice", "Scorer", "choose_providers", "gpu_unavailable"]

log = logging.getLogger(__name__)

WARMUP_BATCH_SIZES = (1, 64)


class Scorer:
    """Scores rows × features float32 matrices (columns in feature-service order).

    ``provider`` is what runs the model, from the profile of the session's warm-up:
    ``CUDAExecutionProvider`` only when every compute node runs on CUDA, else the
    provider that runs them with the share elsewhere ("... (partial: 3 of 12 nodes on
    CPU)"); ``providers`` is what the session registered (``get_providers()``), which may
    differ from what was requested; ``placement`` is the whole :class:`Placement`.
    """

    def __init__(
        self,
        artifact: Artifact,
        *,
        providers: str = "auto",
        intra_op_threads: int = 1,
        io_binding: bool | None = None,
        gpu_crossover_rows: int | None = None,
        variant: str | None = None,
        plan: SessionPlan | None = None,
    ) -> None:
        self.metadata: ModelMetadata = artifact.metadata
        self.path = artifact.path
        meta = self.metadata
        self.n_features = len(meta.features)
        self.defaults: NDArray[np.float32] = np.array(
            [f.default for f in meta.features], dtype=np.float32
        )
        choice = choose_providers(providers)
        # Which variant on which provider, and a CPU session for small batches in auto
        # mode with a GPU (streams.scoring.variants); tests inject ``plan``.
        if plan is None:
            plan = plan_sessions(
                meta,
                providers,
                choice.providers,
                gpu_crossover_rows=gpu_crossover_rows,
                variant=variant,
            )
        requested = list(plan.providers)
        # Where the nodes run: each session's warm-up is profiled (streams.scoring.placement).
        profiles = Profiles()
        self.session, self.variant, self._cpu_session = _open_sessions(
            artifact, plan, profiles.options(lambda: _session_options(intra_op_threads))
        )
        self.gpu_from_rows = plan.gpu_from_rows if self._cpu_session is not None else None
        self.requested_providers: tuple[str, ...] = tuple(requested)
        self.providers: tuple[str, ...] = tuple(self.session.get_providers())
        self.provider: str = self.providers[0]
        self._check_signature()
        self.on_gpu = self.provider in GPU_PROVIDERS
        # IO binding avoids an extra output copy on GPU; on CPU a plain run is simplest and as fast.
        self._io_binding = self.on_gpu if io_binding is None else io_binding
        self.warm_up()
        self.placement: Placement = profiles.finish(
            self.session, artifact.for_variant(self.variant).model_bytes, also=[self._cpu_session]
        )
        # The truth, not get_providers()[0]: CUDA only when every compute node runs there
        # (a CUDA session runs an ai.onnx.ml tree ensemble on CPU), else what runs it.
        self.provider = self.placement.provider
        self.on_gpu = self.placement.on_gpu
        # One line per model: what runs, and why not the GPU when one was asked for.
        fell_back = requested[0] != CPU and self.provider == CPU
        why = (
            f"; {requested[0]} was requested but ONNX Runtime runs every node on CPU"
            if fell_back
            else (f"; {choice.skipped}" if choice.skipped else "")
        )
        if plan.note and not fell_back:
            why += f"; {plan.note}"
        level = (
            logging.WARNING if fell_back or (choice.skipped and choice.gpu_asked) else logging.INFO
        )
        log.log(
            level,
            "model %s loaded from %s: provider in use %s (requested %s%s); %s",
            meta.model_id,
            artifact.path,
            self.provider,
            ", ".join(requested),
            why,
            self.placement.describe(),
        )

    @classmethod
    def load(
        cls,
        onnx_path: Path,
        spec: FeatureServiceSpec | None,
        *,
        providers: str = "auto",
        intra_op_threads: int = 1,
        gpu_crossover_rows: int | None = None,
        variant: str | None = None,
    ) -> Scorer:
        """Check the artifact against ``spec`` (see ``load_artifact``) and open a session."""
        return cls(
            load_artifact(onnx_path, spec),
            providers=providers,
            intra_op_threads=intra_op_threads,
            gpu_crossover_rows=gpu_crossover_rows,
            variant=variant,
        )

    @property
    def model_id(self) -> str:
        return self.metadata.model_id

    def _check_signature(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        found_in = [(i.name, i.type, i.shape) for i in inputs]
        found_out = [(o.name, o.type, o.shape) for o in outputs]
        ok = (
            len(inputs) == 1
            and inputs[0].name == INPUT_NAME
            and inputs[0].type == "tensor(float)"
            and len(inputs[0].shape) == 2
            and inputs[0].shape[1] in (self.n_features, None)
            and any(o.name == OUTPUT_NAME and o.type == "tensor(float)" for o in outputs)
        )
        if not ok:
            raise ModelError(
                f"model {self.path}: expected input {INPUT_NAME!r} float [N, {self.n_features}] "
                f"and output {OUTPUT_NAME!r} float [N]; found inputs {found_in}, "
                f"outputs {found_out}"
            )

    def warm_up(self) -> None:
        """Run default-valued batches so the first real batch pays no allocation or JIT cost."""
        # A two-session scorer warms its GPU session with a batch at the crossover too.
        for n in sorted({*WARMUP_BATCH_SIZES, self.gpu_from_rows or WARMUP_BATCH_SIZES[0]}):
            out = self.score(np.tile(self.defaults, (n, 1)))
            if out.shape != (n,) or not np.isfinite(out).all():
                raise ModelError(
                    f"model {self.path}: warm-up on {n} default rows gave shape {out.shape} "
                    f"with non-finite values={not np.isfinite(out).all()}"
                )

    def prepare(
        self, x: NDArray[Any], missing: NDArray[np.bool_] | None = None
    ) -> NDArray[np.float32]:
        """Validate shapes and put each feature's declared default where missing (or NaN)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ModelError(
                f"model {self.model_id} expects a [rows, {self.n_features}] matrix, "
                f"got shape {x.shape}"
            )
        holes = np.isnan(x)
        if missing is not None:
            if missing.shape != x.shape:
                raise ModelError(
                    f"model {self.model_id}: missing mask shape {missing.shape} "
                    f"!= feature matrix shape {x.shape}"
                )
            holes |= missing
        if holes.any():
            x = np.where(holes, self.defaults, x).astype(np.float32, copy=False)
        return x

    def score(
        self, x: NDArray[Any], missing: NDArray[np.bool_] | None = None
    ) -> NDArray[np.float32]:
        """Fraud probability per row, float32 of shape [rows]."""
        x = self.prepare(x, missing)
        if x.shape[0] == 0:
            return np.empty(0, dtype=np.float32)
        if self._cpu_session is not None and not routes_to_gpu(len(x), self.gpu_from_rows):
            out = self._cpu_session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]  # small: CPU
        elif self._io_binding:
            binding = self.session.io_binding()
            binding.bind_cpu_input(INPUT_NAME, x)
            binding.bind_output(OUTPUT_NAME, "cpu")
            self.session.run_with_iobinding(binding)
            out = binding.copy_outputs_to_cpu()[0]
        else:
            out = self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def decide(
        self, x: NDArray[Any], missing: NDArray[np.bool_] | None = None
    ) -> tuple[NDArray[np.float32], Decisions]:
        """Scores and decisions with this model's thresholds."""
        scores = self.score(x, missing)
        return scores, decide(scores, self.metadata.thresholds)


# -- which execution provider ---------------------------------------------------------------

# Shared libraries ONNX Runtime's CUDA provider links (``readelf -d`` of
# libonnxruntime_providers_cuda.so), by the CUDA major version the wheel was built for.
_CUDA_LIBRARIES = ("libcudart.so.{major}", "libcublas.so.{major}", "libcublasLt.so.{major}",
                   "libcurand.so.10")  # fmt: skip
_TENSORRT_LIBRARIES = ("libnvinfer.so.10", "libnvonnxparser.so.10")


@dataclass(frozen=True, slots=True)
class ProviderChoice:
    """The providers to ask ONNX Runtime for, best first, and why a GPU one was left out."""

    providers: tuple[str, ...]
    skipped: str | None = None  # e.g. "CUDAExecutionProvider left out: no CUDA driver (...)"
    gpu_asked: bool = False  # the setting named a GPU provider (cuda, tensorrt), not "auto"


def choose_providers(
    setting: str,
    available: Sequence[str] | None = None,
    unavailable: Callable[[str], str | None] | None = None,
) -> ProviderChoice:
    """The providers for ``setting`` (STREAMSCORE_PROVIDERS): those this build has
    (``available``, default ``onnxruntime.get_available_providers()``) less each GPU
    provider that cannot initialise here (``unavailable(provider)`` gives the reason,
    default :func:`gpu_unavailable`). Also quiets ONNX Runtime's default logger, before
    any session exists, so its warnings do not reach stderr.
    """
    # Errors only (3): its CUDA-missing warnings are noise once we choose for ourselves.
    ort.set_default_logger_severity(3)
    found = ort.get_available_providers() if available is None else available
    requested = select_providers(setting, found)
    probe = gpu_unavailable if unavailable is None else unavailable
    kept: list[str] = []
    reasons: list[str] = []
    for provider in requested:
        reason = probe(provider) if provider in GPU_PROVIDERS else None
        if reason is None:
            kept.append(provider)
        else:
            reasons.append(f"{provider} left out: {reason}")
    gpu_asked = setting.lower() in ("cuda", "tensorrt")
    return ProviderChoice(tuple(kept), "; ".join(reasons) or None, gpu_asked)


@functools.cache
def gpu_unavailable(provider: str) -> str | None:
    """Why ``provider`` (CUDA or TensorRT) cannot initialise in this process, or None when
    it can. Loads the driver and the libraries the provider links, as ONNX Runtime would,
    and prints nothing."""
    if provider == TENSORRT:
        cuda = gpu_unavailable(CUDA)
        if cuda is not None:
            return cuda
        missing = _unloadable(_TENSORRT_LIBRARIES)
        return f"TensorRT libraries not found: {', '.join(missing)}" if missing else None
    if provider != CUDA:
        return f"{provider} is not a GPU provider streamscore knows"
    if not sys.platform.startswith("linux"):
        return None  # not probed here: ONNX Runtime tries, and the provider is read back
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no CUDA driver (libcuda.so.1 not found)"
    status = driver.cuInit(0)
    if status != 0:
        return f"the CUDA driver does not initialise (cuInit error {status})"
    count = ctypes.c_int(0)
    if driver.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return "no CUDA device"
    needed = tuple(name.format(major=_cuda_major()) for name in _CUDA_LIBRARIES)
    missing = _unloadable(needed)
    if missing:
        # onnxruntime-gpu can load them from the nvidia-* wheels; once loaded, the loader
        # finds them by name. It prints its own notes: they go nowhere.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
            ort.preload_dlls(cuda=True, cudnn=True)
        missing = _unloadable(needed)
    return f"CUDA libraries not found: {', '.join(missing)}" if missing else None


def _cuda_major() -> str:
    try:
        from onnxruntime.capi.build_and_package_info import cuda_version
    except ImportError:  # a CPU-only build
        return "12"
    return str(cuda_version).split(".", 1)[0] or "12"


def _unloadable(names: Sequence[str]) -> list[str]:
    missing: list[str] = []
    for name in names:
        try:
            ctypes.CDLL(name)
        except OSError:
            missing.append(name)
    return missing


def _session_options(intra_op_threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    # Small graphs on a small machine: one inter-op thread, nodes run in order.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning worker threads burn a core waiting for work; cores here are shared.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # ONNX Runtime's own warnings stay quiet; the one line below says what runs.
    options.log_severity_level = 3
    return options


def _open_sessions(
    artifact: Artifact, plan: SessionPlan, options: Callable[[], ort.SessionOptions]
) -> tuple[ort.InferenceSession, str, ort.InferenceSession | None]:
    """``(main session, its variant, CPU session for small batches or None)`` for ``plan``.

    A GPU session that ONNX Runtime put on CPU after all is reopened on the CPU variant
    (the tensor variant is several times slower on CPU), and then no second session.
    """
    main = _open_session(artifact.for_variant(plan.variant), options(), list(plan.providers))
    if plan.on_gpu and main.get_providers()[0] not in GPU_PROVIDERS:
        if plan.variant != plan.cpu_variant:
            main = _open_session(artifact.for_variant(plan.cpu_variant), options(), [CPU])
        return main, plan.cpu_variant, None
    if plan.gpu_from_rows is None:
        return main, plan.variant, None
    small = _open_session(artifact.for_variant(plan.cpu_variant), options(), [CPU])
    return main, plan.variant, small


def _open_session(
    artifact: Artifact, options: ort.SessionOptions, providers: list[str]
) -> ort.InferenceSession:
    """An InferenceSession made only of the artifact's hashed bytes.

    The main graph's external initializers come from memory; any other external tensor
    has been copied into the graph by ``Artifact.session_model``. In case ONNX Runtime
    still looks for a file, its external-data folder is pointed at an empty directory that
    lives only while the session is built, so such a lookup fails instead of reading
    whatever sits beside the model or in the working directory.
    """
    # In the Python API since late 2025 (onnxruntime PR #26012); older releases get every
    # external tensor copied into the graph instead (2 GiB in all at most).
    in_memory = hasattr(options, "add_external_initializers_from_files_in_memory")
    model = artifact.session_model(initializers_in_memory=in_memory)
    if in_memory and artifact.external_data:
        names = list(artifact.external_data)
        buffers = [artifact.external_data[n] for n in names]
        options.add_external_initializers_from_files_in_memory(
            names, buffers, [len(b) for b in buffers]
        )
    with tempfile.TemporaryDirectory(prefix="streamscore-no-files-") as empty:
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", empty
        )
        try:
            return ort.InferenceSession(model, options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelError(
                f"ONNX Runtime cannot load model {artifact.path}: {exc}; the model was not loaded"
            ) from exc
