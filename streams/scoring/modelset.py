"""The models serving together (champion, shadows, canaries) and a holder that swaps them safely.

``ModelHolder.swap`` builds a complete new ModelSet first and only then replaces the
current one, so a corrupt or mismatched artifact leaves the previous set serving.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from streams.errors import ModelError
from streams.features.spec import FeatureServiceSpec
from streams.scoring.decide import Decisions, decide
from streams.scoring.registry import (
    RegistryConfig,
    artifact_path,
    load_registry,
    registry_path,
)
from streams.scoring.scorer import Scorer

__all__ = [
    "Challenger",
    "ModelHolder",
    "ModelScores",
    "ModelSet",
    "ScoredBatch",
    "traffic_buckets",
]

log = logging.getLogger(__name__)


def traffic_buckets(event_ids: Sequence[str]) -> NDArray[np.float64]:
    """A stable number in [0, 1) per event id (blake2b), the same on every worker and run."""
    out = np.empty(len(event_ids), dtype=np.float64)
    for i, event_id in enumerate(event_ids):
        digest = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0**64
    return out


@dataclass(frozen=True, slots=True)
class Challenger:
    scorer: Scorer
    role: str  # "shadow" or "canary"
    share: float = 0.0


@dataclass(frozen=True, slots=True)
class ScoredBatch:
    """One batch scored by a ModelSet.

    ``scores``/``decisions`` come from the model that decided each row, named by
    ``model_ids[decided_by[i]]``; ``challenger_scores`` holds every challenger's score
    for every row (shadows and canaries), for logging and comparison.
    """

    scores: NDArray[np.float32]
    decisions: Decisions
    decided_by: NDArray[np.int16]
    model_ids: tuple[str, ...]
    challenger_scores: dict[str, NDArray[np.float32]] = field(default_factory=dict)

    def decided_by_ids(self) -> list[str]:
        return [self.model_ids[i] for i in self.decided_by]


@dataclass(frozen=True, slots=True)
class ModelScores:
    """One model's own scores and decisions for every row of a batch.

    ``decided`` marks the rows where this model's decision is the one acted on: the
    champion's everywhere except its canaries' slices. Exactly one model decides a row.
    """

    model_id: str
    role: str  # champion, shadow or canary
    scores: NDArray[np.float32]
    decisions: Decisions
    decided: NDArray[np.bool_]


class ModelSet:
    """A champion plus challengers, all checked against the same feature service."""

    def __init__(self, champion: Scorer, challengers: Sequence[Challenger] = ()) -> None:
        self.champion = champion
        self.challengers = tuple(challengers)
        self.model_ids = (champion.model_id, *(c.scorer.model_id for c in self.challengers))
        names = champion.metadata.feature_names
        for c in self.challengers:
            if c.scorer.metadata.feature_names != names:
                raise ModelError(
                    f"challenger {c.scorer.model_id} features differ from champion "
                    f"{champion.model_id}'s; both must use the same feature service order"
                )
        if sum(c.share for c in self.challengers if c.role == "canary") > 1.0:
            raise ModelError("canary shares add up to more than 1")

    @classmethod
    def from_registry(
        cls,
        settings: Any,
        spec: FeatureServiceSpec,
        config: RegistryConfig | None = None,
    ) -> ModelSet:
        """Load every model named in ``<models_dir>/registry.yaml`` (or ``config``)."""
        models_dir = settings.models_dir
        config = config or load_registry(registry_path(models_dir))
        if config.champion is None:
            raise ModelError(f"no champion yet in {registry_path(models_dir)}: nothing to serve")

        def load(model_id: str) -> Scorer:
            return Scorer.load(
                artifact_path(models_dir, model_id),
                spec,
                providers=settings.providers,
                intra_op_threads=settings.intra_op_threads,
                gpu_crossover_rows=settings.gpu_crossover_rows,
            )

        champion = load(config.champion)
        challengers = [Challenger(load(c.model), c.role, c.share) for c in config.challengers]
        return cls(champion, challengers)

    def score(
        self,
        event_ids: Sequence[str],
        x: NDArray[Any],
        missing: NDArray[np.bool_] | None = None,
    ) -> ScoredBatch:
        """Score a batch; canaries decide their share of rows, the champion the rest."""
        prepared = self.champion.prepare(x, missing)
        if len(event_ids) != prepared.shape[0]:
            raise ModelError(f"{len(event_ids)} event ids for a batch of {prepared.shape[0]} rows")
        scores = self.champion.score(prepared)
        decided_by = np.zeros(len(scores), dtype=np.int16)
        extra: dict[str, NDArray[np.float32]] = {}
        canaries = [c for c in self.challengers if c.role == "canary"]
        buckets = traffic_buckets(event_ids) if canaries else None
        start = 0.0
        decisions = decide(scores, self.champion.metadata.thresholds)
        for index, c in enumerate(self.challengers, start=1):
            their = c.scorer.score(prepared)
            extra[c.scorer.model_id] = their
            if c.role != "canary" or buckets is None:
                continue
            # Canaries take consecutive slices of [0, 1), so their traffic never overlaps.
            rows = (buckets >= start) & (buckets < start + c.share)
            start += c.share
            if rows.any():
                theirs = decide(their[rows], c.scorer.metadata.thresholds)
                scores[rows] = their[rows]
                decisions.decision[rows] = theirs.decision
                decisions.human_review[rows] = theirs.human_review
                decided_by[rows] = index
        return ScoredBatch(scores, decisions, decided_by, self.model_ids, extra)

    def score_each(self, event_ids: Sequence[str], x: NDArray[Any]) -> list[ModelScores]:
        """Every model's scores on the same rows, champion first; canaries take their slices."""
        prepared = self.champion.prepare(x)
        if len(event_ids) != prepared.shape[0]:
            raise ModelError(f"{len(event_ids)} event ids for a batch of {prepared.shape[0]} rows")
        champion_scores = self.champion.score(prepared)
        champion_decides = np.ones(len(champion_scores), dtype=np.bool_)
        out = [
            ModelScores(
                self.champion.model_id,
                "champion",
                champion_scores,
                decide(champion_scores, self.champion.metadata.thresholds),
                champion_decides,
            )
        ]
        buckets = (
            traffic_buckets(event_ids)
            if any(c.role == "canary" for c in self.challengers)
            else None
        )
        start = 0.0
        for c in self.challengers:
            scores = c.scorer.score(prepared)
            decided = np.zeros(len(scores), dtype=np.bool_)
            if c.role == "canary" and buckets is not None:
                decided = (buckets >= start) & (buckets < start + c.share)
                start += c.share
                champion_decides &= ~decided
            out.append(
                ModelScores(
                    c.scorer.model_id,
                    c.role,
                    scores,
                    decide(scores, c.scorer.metadata.thresholds),
                    decided,
                )
            )
        return out


class ModelHolder:
    """Holds the serving ModelSet; ``swap`` replaces it only after a successful load."""

    def __init__(self, initial: ModelSet | None = None) -> None:
        self._current = initial
        self._lock = threading.Lock()

    @property
    def current(self) -> ModelSet:
        current = self._current
        if current is None:
            raise ModelError("no model set loaded yet")
        return current

    @property
    def loaded(self) -> bool:
        return self._current is not None

    def swap(self, build: Callable[[], ModelSet]) -> ModelSet:
        """Build a new set and make it current; on failure keep the old one and re-raise.

        Readers take ``current`` once per batch; assigning one reference is atomic, so a
        batch is scored wholly by the old set or wholly by the new one.
        """
        with self._lock:  # one reload at a time
            try:
                new = build()
            except ModelError as exc:
                kept = ", ".join(self._current.model_ids) if self._current else "nothing"
                log.error("model reload failed, still serving %s: %s", kept, exc)
                raise
            self._current = new
            log.info("now serving %s", ", ".join(new.model_ids))
            return new
