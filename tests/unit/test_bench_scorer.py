"""``streamscore bench scorer``: the crossover per model kind from measured rows/s.

``crossover`` is pure: these tests feed it result rows, no model is trained or timed.
"""

from __future__ import annotations

from typing import Any

import pytest

from streams.bench.scorer import DEFAULT_BATCH_SIZES, VARIANTS, crossover


def test_defaults_cover_every_variant_and_the_batch_sizes_asked_for() -> None:
    assert DEFAULT_BATCH_SIZES == (64, 256, 1024, 4096, 16384)
    assert VARIANTS == {
        "lightgbm-trees": ("lightgbm", "trees"),
        "lightgbm-tensor": ("lightgbm", "tensor"),
        "mlp": ("mlp", None),
    }


def _rows(variant: str, on_gpu: bool, rates: dict[int, float]) -> list[dict[str, Any]]:
    return [
        {
            "kind": "lightgbm",
            "model_variant": variant,
            "on_gpu": on_gpu,
            "batch_size": b,
            "rows_per_s": r,
        }
        for b, r in rates.items()
    ]


SERVED = {"lightgbm": {"cpu": "trees", "gpu": "tensor"}}
CPU_RATES = {64: 160e3, 256: 170e3, 1024: 170e3, 4096: 160e3}


@pytest.mark.parametrize(
    "gpu_rates, expected, reason",
    [
        ({64: 20e3, 256: 90e3, 1024: 400e3, 4096: 2e6}, 1024, None),
        # Wins at 256, loses at 1024: routing from 256 would lose there.
        ({64: 20e3, 256: 180e3, 1024: 150e3, 4096: 2e6}, 4096, None),
        ({64: 20e3, 256: 30e3, 1024: 40e3, 4096: 50e3}, None, "slower at every batch size"),
    ],
)
def test_crossover_is_where_the_gpu_wins_from_then_on(
    gpu_rates: dict[int, float], expected: int | None, reason: str | None
) -> None:
    results = _rows("trees", False, CPU_RATES) + _rows("tensor", True, gpu_rates)
    # The tensor variant on CPU and trees on a CUDA session are not what auto would run.
    results += _rows("tensor", False, dict.fromkeys(CPU_RATES, 1e9))
    point = crossover(results, SERVED, "unused")["lightgbm"]
    assert point["crossover_batch"] == expected
    assert (point["reason"] is None) == (reason is None)
    if reason:
        assert reason in point["reason"]


def test_no_gpu_means_a_null_crossover_with_the_reason() -> None:
    results = _rows("trees", False, CPU_RATES) + _rows("tensor", False, CPU_RATES)
    point = crossover(results, SERVED, "CUDAExecutionProvider left out: no CUDA driver")["lightgbm"]
    assert point == {
        "cpu_variant": "trees",
        "gpu_variant": "tensor",
        "crossover_batch": None,
        "reason": "no GPU ran: CUDAExecutionProvider left out: no CUDA driver",
    }
