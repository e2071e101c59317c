"""Scorer: one checked ONNX artifact in one ONNX Runtime session, scoring float32 batches.

The session is built from the artifact's in-memory bytes (the ones ``load_artifact``
hashed), never from a path, so ONNX Runtime reads no file of its own.
"""

from __future__ import annotations

import logging
import tempfile
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
from streams.scoring.providers import CPU, GPU_PROVIDERS, select_providers

__all__ = ["Scorer"]

log = logging.getLogger(__name__)

WARMUP_BATCH_SIZES = (1, 64)


class Scorer:
    """Scores rows × features float32 matrices (columns in feature-service order).

    ``provider`` is the execution provider ONNX Runtime actually uses, read back from
    the session after creation (it may differ from what was requested).
    """

    def __init__(
        self,
        artifact: Artifact,
        *,
        providers: str = "auto",
        intra_op_threads: int = 1,
        io_binding: bool | None = None,
    ) -> None:
        self.metadata: ModelMetadata = artifact.metadata
        self.path = artifact.path
        meta = self.metadata
        self.n_features = len(meta.features)
        self.defaults: NDArray[np.float32] = np.array(
            [f.default for f in meta.features], dtype=np.float32
        )
        requested = select_providers(providers, ort.get_available_providers())
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        # Small graphs on a small machine: one inter-op thread, nodes run in order.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning worker threads burn a core waiting for work; cores here are shared.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Keep ONNX Runtime's own CUDA-missing warnings quiet; we report the outcome below.
        options.log_severity_level = 3
        self.session = _open_session(artifact, options, requested)
        self.requested_providers: tuple[str, ...] = tuple(requested)
        self.providers: tuple[str, ...] = tuple(self.session.get_providers())
        self.provider: str = self.providers[0]
        self._check_signature()
        self.on_gpu = self.provider in GPU_PROVIDERS
        # IO binding avoids an extra output copy on GPU; on CPU a plain run is simplest and as fast.
        self._io_binding = self.on_gpu if io_binding is None else io_binding
        log.info(
            "model %s loaded from %s: provider in use %s (requested %s)",
            meta.model_id,
            artifact.path,
            self.provider,
            ", ".join(requested),
        )
        if requested[0] != CPU and self.provider == CPU:
            log.warning(
                "model %s: %s was requested but ONNX Runtime fell back to CPU",
                meta.model_id,
                requested[0],
            )
        self.warm_up()

    @classmethod
    def load(
        cls,
        onnx_path: Path,
        spec: FeatureServiceSpec | None,
        *,
        providers: str = "auto",
        intra_op_threads: int = 1,
    ) -> Scorer:
        """Check the artifact against ``spec`` (see ``load_artifact``) and open a session."""
        return cls(
            load_artifact(onnx_path, spec), providers=providers, intra_op_threads=intra_op_threads
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
        for n in WARMUP_BATCH_SIZES:
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
        if self._io_binding:
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
