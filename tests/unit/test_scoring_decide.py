"""Thresholds to decisions: the pure ``decide`` function."""

from __future__ import annotations

import numpy as np
import pytest

from streams.errors import ModelError
from streams.scoring import Decision, Thresholds, decide

T = Thresholds(review=0.5, decline=0.9, low_confidence_low=0.8, low_confidence_high=0.9)


def test_scores_map_to_approve_review_decline_and_band() -> None:
    scores = np.array([0.0, 0.49, 0.5, 0.79, 0.8, 0.89, 0.9, 1.0], dtype=np.float32)
    out = decide(scores, T)
    assert out.labels() == [
        "approve", "approve", "review", "review", "review", "review", "decline", "decline",
    ]  # fmt: skip
    assert out.human_review.tolist() == [False, False, False, False, True, True, False, False]
    assert out.decision.dtype == np.int8
    assert len(out) == 8


def test_band_overrides_threshold_decision() -> None:
    # A band reaching below the review threshold still routes those scores to a human.
    t = Thresholds(review=0.5, decline=0.9, low_confidence_low=0.3, low_confidence_high=0.4)
    out = decide(np.array([0.35, 0.45], dtype=np.float32), t)
    assert out.decision.tolist() == [Decision.REVIEW, Decision.APPROVE]
    assert out.human_review.tolist() == [True, False]


def test_nan_score_is_never_approved() -> None:
    out = decide(np.array([np.nan], dtype=np.float32), T)
    assert out.decision[0] == Decision.REVIEW and out.human_review[0]


@pytest.mark.parametrize(
    "values",
    [(0.9, 0.5, 0.8, 0.9), (0.1, 0.5, 0.4, 0.3), (-0.1, 0.5, 0.5, 0.5), (0.1, 1.5, 0.5, 0.5)],
)
def test_inconsistent_thresholds_are_refused(values: tuple[float, ...]) -> None:
    with pytest.raises(ModelError):
        Thresholds(*values)


def test_thresholds_round_trip_and_reject_unknown_keys() -> None:
    assert Thresholds.from_dict(T.to_dict()) == T
    with pytest.raises(ModelError, match="exactly"):
        Thresholds.from_dict({**T.to_dict(), "extra": 1.0})


def test_decide_wants_one_dimension() -> None:
    with pytest.raises(ModelError, match="1-D"):
        decide(np.zeros((2, 2), dtype=np.float32), T)
