"""Scores to decisions: approve / review / decline, plus a low-confidence flag for human review.

Pure numpy, no model and no I/O, so the same function decides on CPU and GPU scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from numpy.typing import NDArray

from streams.errors import ModelError

__all__ = ["Decision", "Decisions", "Thresholds", "decide"]


class Decision(IntEnum):
    """What happens to a transaction. Stored as int8 in arrays and in ClickHouse."""

    APPROVE = 0
    REVIEW = 1
    DECLINE = 2


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Decision thresholds on the fraud probability.

    ``score < review`` approves, ``review <= score < decline`` reviews (step-up or hold),
    ``score >= decline`` declines. Scores in the low-confidence band
    ``[low_confidence_low, low_confidence_high)`` are where the model is least sure of
    its call: they become REVIEW and are flagged for a human analyst whatever the
    thresholds alone would say.
    """

    review: float
    decline: float
    low_confidence_low: float
    low_confidence_high: float

    def __post_init__(self) -> None:
        values = (self.review, self.decline, self.low_confidence_low, self.low_confidence_high)
        if not all(0.0 <= v <= 1.0 for v in values):
            raise ModelError(f"thresholds must lie in [0, 1], got {self}")
        if self.review > self.decline:
            raise ModelError(
                f"review threshold {self.review} is above decline threshold {self.decline}"
            )
        if self.low_confidence_low > self.low_confidence_high:
            raise ModelError(
                f"low-confidence band is empty or inverted: "
                f"[{self.low_confidence_low}, {self.low_confidence_high})"
            )

    def to_dict(self) -> dict[str, float]:
        return {
            "review": self.review,
            "decline": self.decline,
            "low_confidence_low": self.low_confidence_low,
            "low_confidence_high": self.low_confidence_high,
        }

    @classmethod
    def from_dict(cls, data: object) -> Thresholds:
        keys = ("review", "decline", "low_confidence_low", "low_confidence_high")
        if not isinstance(data, dict) or set(data) != set(keys):
            raise ModelError(f"thresholds must be a mapping with exactly {keys}, got {data!r}")
        try:
            return cls(*(float(data[k]) for k in keys))
        except (TypeError, ValueError) as exc:
            raise ModelError(f"thresholds hold a non-number: {data!r}") from exc


@dataclass(frozen=True, slots=True)
class Decisions:
    """One decision per row: ``decision`` holds Decision codes (int8), ``human_review`` the flag."""

    decision: NDArray[np.int8]
    human_review: NDArray[np.bool_]

    def __len__(self) -> int:
        return int(self.decision.shape[0])

    def labels(self) -> list[str]:
        """Decision names per row (``approve``, ``review``, ``decline``), for logs and sinks."""
        names = np.array([d.name.lower() for d in Decision])
        return [str(s) for s in names[self.decision]]


def decide(scores: NDArray[np.float32], thresholds: Thresholds) -> Decisions:
    """Decide every row of ``scores`` (fraud probabilities). NaN scores go to human review."""
    s = np.asarray(scores)
    if s.ndim != 1:
        raise ModelError(f"decide expects a 1-D array of scores, got shape {s.shape}")
    decision = np.full(s.shape, Decision.APPROVE, dtype=np.int8)
    decision[s >= thresholds.review] = Decision.REVIEW
    decision[s >= thresholds.decline] = Decision.DECLINE
    human = (s >= thresholds.low_confidence_low) & (s < thresholds.low_confidence_high)
    # A NaN score means the model failed on this row: never approve it silently.
    human |= np.isnan(s)
    decision[human] = Decision.REVIEW
    return Decisions(decision=decision, human_review=human)
