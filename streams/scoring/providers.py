"""Which ONNX Runtime execution providers to ask for, from ``settings.providers``."""

from __future__ import annotations

from collections.abc import Sequence

from streams.errors import ConfigError

__all__ = ["CPU", "CUDA", "GPU_PROVIDERS", "TENSORRT", "select_providers"]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = frozenset({CUDA, TENSORRT})

_WANTED = {
    "auto": (CUDA, CPU),
    "cpu": (CPU,),
    "cuda": (CUDA, CPU),
    "tensorrt": (TENSORRT, CUDA, CPU),
}


def select_providers(setting: str, available: Sequence[str]) -> list[str]:
    """The providers to request, best first, keeping only those this build has.

    ``available`` is ``onnxruntime.get_available_providers()``. Being listed there only
    means the provider was compiled in: CUDA may still fail to initialise (no driver, no
    cuDNN) and ONNX Runtime then falls back to CPU silently, so callers must read
    ``session.get_providers()`` back to know what runs.
    """
    wanted = _WANTED.get(setting.lower())
    if wanted is None:
        raise ConfigError(f"STREAMSCORE_PROVIDERS={setting!r} is not one of {', '.join(_WANTED)}")
    chosen = [p for p in wanted if p in available]
    if CPU not in chosen:
        chosen.append(CPU)  # ONNX Runtime always has it, even if a stub list says otherwise
    return chosen
