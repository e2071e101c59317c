"""Holdout metrics, decision thresholds and baseline histograms from scores and labels."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from streams.monitoring.drift import baseline_edges
from streams.scoring.decide import Thresholds
from streams.scoring.metadata import Histogram

# Operating points as false-positive rates on legitimate holdout traffic.
REVIEW_FPR = 0.01
LOW_CONFIDENCE_FPR = 0.0025
DECLINE_FPR = 0.001


def metrics(y: NDArray[np.int8], scores: NDArray[np.float32]) -> dict[str, float]:
    """ROC AUC, PR AUC (average precision) and recall at 1% false-positive rate."""
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    positives = int(y.sum())
    out: dict[str, float] = {
        "holdout_rows": float(len(y)),
        "holdout_positives": float(positives),
        "holdout_fraud_rate": float(positives / max(len(y), 1)),
    }
    if 0 < positives < len(y):
        fpr, tpr, _ = roc_curve(y, scores)
        out["roc_auc"] = float(roc_auc_score(y, scores))
        out["pr_auc"] = float(average_precision_score(y, scores))
        out["recall_at_1pct_fpr"] = float(tpr[fpr <= REVIEW_FPR].max())
    return out


def _score_at_fpr(negatives: NDArray[np.float32], fpr: float) -> float:
    if len(negatives) == 0:
        return 1.0
    return float(np.quantile(negatives.astype(np.float64), 1.0 - fpr, method="higher"))


def thresholds(y: NDArray[np.int8], scores: NDArray[np.float32]) -> Thresholds:
    """Thresholds at fixed false-positive rates on the holdout's legitimate transactions.

    review at 1% FPR, decline at 0.1% FPR; the low-confidence band is the sliver just
    below decline (between 0.25% and 0.1% FPR) where a human should look before money moves.
    """
    neg = scores[y == 0]
    review = _score_at_fpr(neg, REVIEW_FPR)
    decline = max(_score_at_fpr(neg, DECLINE_FPR), review)
    low = min(max(_score_at_fpr(neg, LOW_CONFIDENCE_FPR), review), decline)
    return Thresholds(
        review=_clip(review),
        decline=_clip(decline),
        low_confidence_low=_clip(low),
        low_confidence_high=_clip(decline),
    )


def _clip(v: float) -> float:
    return float(min(max(v, 0.0), 1.0))


def histogram(values: NDArray[np.floating], bins: int = 10) -> Histogram:
    """The drift monitor's bins (``baseline_edges``: quantiles, an atom such as a flag's
    zeros binned apart) and the share of rows in each."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return Histogram((), (1.0,))
    edges = baseline_edges(v, bins)
    counts = np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1)
    proportions = counts / counts.sum()
    return Histogram(tuple(float(e) for e in edges), tuple(round(float(p), 6) for p in proportions))
