"""The fused scoring stage: raw records → guards, validation → features → every model →
decisions, review, scored rows, the valid hand-off and the DLQ, in one pass per batch.

Per batch of raw records (bounded by ``score_batch_size`` and ``score_batch_seconds``):

1. guards, parse and validate every record (``streams.ingest``, in a thread); valid events
   go on to their hand-off topic (for the lake and the labels stage), invalid ones to the
   DLQ with their original bytes (``streams.sinks.handoff``);
2. the valid events of this stage's type: drop copies already scored (``SourceMarks``,
   loaded from ClickHouse on assignment), decode, look up features, score with the
   champion and every challenger, decide, and encode the ``predictions`` rows and drift
   deltas as Arrow IPC (``streams.scoring.pipeline``, ``streams.sinks.scored``; pure, in a
   thread);
3. send one decision per event to the decisions (``predictions``) topic, the
   low-confidence ones with full context to the review topic, and the rows to the scored
   topic for the ClickHouse sink stage (``streams.agents.sink``); wait for every ack;
4. return, and only then does ``BatchAgent`` store the raw offsets.

One Kafka hop from producer to decision, one consumer group. No decision waits for
ClickHouse. A failed send exits the process (code 72) before offsets move; the batch is
read again after the restart (its decisions may be read twice, with the same event id and
model version; the sink drops its rows as copies; the hand-off carries the raw
coordinates, which the lake and labels stages key on).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Message

from streams.agents.batching import BatchAgent, now_ms
from streams.clickhouse.gateway import ClickHouseGateway
from streams.clickhouse.reads import ClickHouseReads, latest_run, live_marks, reads_for
from streams.errors import DeliveryError
from streams.features.online import HeldRuns, OnlineFeatures
from streams.features.runs import NightlyRun, recent_runs_sql, run_from_row
from streams.ingest import DeadLetter, Limits, ingest_batch
from streams.kafka import make_producer
from streams.monitoring.drift import DriftDeltas
from streams.monitoring.metrics import WorkerMetrics
from streams.monitoring.stream import DriftMonitor
from streams.records import RawRecord, ValidEvent, scoring_event, to_raw_record
from streams.redact import redact
from streams.runtime.control import ControlMessage
from streams.schemas.registry import SchemaRegistry
from streams.scoring.modelset import ModelHolder, ModelSet
from streams.scoring.pipeline import (
    DecodedBatch,
    ScoredEvents,
    decode_events,
    input_columns,
    prediction_messages,
    review_messages,
    score_events,
)
from streams.scoring.placement import Placement
from streams.scoring.registry import registry_path
from streams.settings import Settings
from streams.sinks.clickhouse import SourceMarks
from streams.sinks.handoff import KafkaHandoff
from streams.sinks.scored import (
    DRIFT_HEADERS,
    Headers,
    encode_rows,
    encode_scored,
    encode_table,
)
from streams.topics import PREDICTIONS, REVIEW, raw_topic, raw_topics, scored_topic, topic_name

log = logging.getLogger("streams.agents.score")

EXIT_SINK_FAILED = 72
UNDECODABLE = "undecodable"
RELOAD_EVERY_S = 30.0  # the default of STREAMSCORE_FEATURE_RELOAD_S


def model_rows(models: ModelSet, settings: Settings) -> list[list[object]]:
    """Rows for the ``models`` table: what a prediction's feature vector means, its card,
    and where its nodes run (``Scorer.placement``)."""
    scorers = [models.champion, *(c.scorer for c in models.challengers)]
    rows: list[list[object]] = []
    for s in scorers:
        meta = s.metadata
        card = Path(settings.models_dir) / "artifacts" / f"{s.model_id}.card.md"
        rows.append(
            [
                s.model_id,
                meta.name,
                settings.feature_service,
                list(meta.feature_names),
                meta.thresholds.to_dict(),
                str(card),
                meta.onnx_sha256,
                s.provider,
                settings.worker_id,
                dict(s.placement.nodes_by_provider),
                dict(s.placement.share_by_provider),
                s.placement.cuda_capable,
                [str(op) for op in s.placement.without_cuda_kernel],
            ]
        )
    return rows


@dataclass(frozen=True, slots=True)
class Prepared:
    """A batch after the pure part: what to answer, and what the sink stage gets."""

    decoded: DecodedBatch
    scored: ScoredEvents | None
    closed: DriftDeltas | None  # windows this batch closed (for the drift gauges)
    rows: list[tuple[int, bytes]]  # (valid partition, Arrow IPC predictions rows)
    deltas: bytes | None  # Arrow IPC drift_deltas rows


MODEL_COLUMNS = (
    "model_version",
    "model_name",
    "feature_service",
    "feature_names",
    "thresholds",
    "card_path",
    "artifact_sha256",
    "provider",
    "worker_id",
    "nodes_by_provider",  # migration 0009
    "compute_share_by_provider",
    "cuda_capable",
    "without_cuda_kernel",
)


class Scoring:
    """Everything one scoring agent holds: features, models, producers and dedup marks.

    It reads ClickHouse through ``reads`` (which nightly run is live, marks on assignment)
    and never writes it: its rows, drift deltas, models and baselines go to the sink stage
    on the scored topic.
    """

    def __init__(
        self,
        settings: Settings,
        reads: ClickHouseReads,
        *,
        event_type: str = "transaction",
        features: OnlineFeatures | None = None,
        holder: ModelHolder | None = None,
        registry: SchemaRegistry | None = None,
        run: str = "live",
    ) -> None:
        self.settings = settings
        self.reads = reads
        self.event_type = event_type
        # The partitions this stage reads: scored rows carry them as ``handoff_partition``
        # (the scored topic has as many), and marks and drift deltas key on them.
        self.topic = raw_topic(settings)
        self.topics = raw_topics(settings)
        self.registry = registry or SchemaRegistry.load(settings.schemas_dir)
        self.limits = Limits(settings.max_payload_bytes, settings.max_nesting_depth)
        self.run = run
        self.features = features or OnlineFeatures(
            settings,
            latest_run=lambda: self._latest_run(),
            recent_runs=lambda: self._recent_runs(),
        )
        if features is None and not self.features.switch_if_newer():
            # switch_if_newer is False when there is no successful run yet.
            from streams.errors import FeatureError

            raise FeatureError(
                "no successful nightly feature run in ClickHouse "
                f"({redact(settings.clickhouse_url)}): run `streamscore nightly` before scoring"
            )
        if features is None and (held := self.features.held) is not None:
            log.info("features from nightly runs by event time: %s", held.describe())
        self.holder = holder or ModelHolder()
        if not self.holder.loaded:
            self.holder.swap(self._load_models)
        self.dedup = settings.sink_dedup
        self.marks = SourceMarks()
        self.columns = input_columns(self.features.layout)
        self.handoff = KafkaHandoff(settings)
        self.producer = make_producer(
            settings, **{"linger.ms": 2, "delivery.report.only.error": True}
        )
        self.predictions_topic = topic_name(settings, PREDICTIONS)
        self.review_topic = topic_name(settings, REVIEW)
        self.scored_topic = scored_topic(settings, event_type)
        self._failures: list[str] = []
        self._registry_mtime = self._registry_stamp()
        self._reload_lock = threading.Lock()  # one reload at a time (held while loading)
        self._pending_lock = threading.Lock()
        self._pending: tuple[HeldRuns | None, ModelSet | None] | None = None
        self.counts = {
            "valid": 0, "dead": 0, "scored": 0, "review": 0, "copies_dropped": 0, "undecodable": 0,
            "stale_features": 0,
        }  # fmt: skip
        self.metrics: WorkerMetrics | None = None
        self.drift = self._drift_monitor() if settings.drift_enabled else None
        self.record_models()

    # -- models and features -------------------------------------------------------
    def _latest_run(self) -> NightlyRun | None:
        return latest_run(self.reads, self.settings.feature_service)

    def _recent_runs(self) -> list[NightlyRun]:
        """The newest successful runs: what the features hold is chosen from them."""
        rows = self.reads.rows(
            recent_runs_sql(self.reads.database), {"service": self.settings.feature_service}
        )
        return [run_from_row(row) for row in rows]

    def _load_models(self) -> ModelSet:
        return ModelSet.from_registry(self.settings, self.features.layout.spec)

    def _registry_stamp(self) -> float:
        path = registry_path(self.settings.models_dir)
        return path.stat().st_mtime if path.exists() else 0.0

    def _drift_monitor(self) -> DriftMonitor:
        # Deltas: each batch's counts travel with its rows to the sink stage, which inserts
        # them into drift_deltas (no ClickHouse write here, no seeding after a restart).
        layout = self.features.layout
        return DriftMonitor.from_settings(
            None,
            self.settings,
            thresholds={f.name: f.drift_threshold for f in layout.spec.features},
            event_type=self.event_type,
            source_topic=raw_topic(self.settings),
            entity_features=[len(v.features) for v in layout.views],
            entity_names=[v.name for v in layout.views],
            emit="deltas",
            valid_topic=self.topic,
        )

    def served_models(self) -> list[tuple[str, str, str]]:
        """(model id, role, provider in use) of every serving model."""
        models = self.holder.current
        return [
            (models.champion.model_id, "champion", models.champion.provider),
            *((c.scorer.model_id, c.role, c.scorer.provider) for c in models.challengers),
        ]

    def served_placement(self) -> dict[str, Placement]:
        """Where each serving model's nodes run, by model id."""
        models = self.holder.current
        scorers = [models.champion, *(c.scorer for c in models.challengers)]
        return {s.model_id: s.placement for s in scorers}

    def record_models(self) -> None:
        """Record the serving models (and their drift baselines): rows for the sink stage,
        confirmed with the next batch's flush, and the model gauges on /metrics."""
        if self.metrics is not None:  # (set once the agent is attached)
            self.metrics.set_models(self.served_models(), self.served_placement())
        models = model_rows(self.holder.current, self.settings)
        messages = [encode_rows("models", MODEL_COLUMNS, models)]
        if self.drift is not None:
            names, baselines = self.drift.set_models(self.holder.current)
            if baselines:
                messages.append(encode_rows("drift_baselines", names, baselines))
        for headers, value in messages:
            self.send_to(self.scored_topic, 0, value, headers)

    def check_reload(self) -> None:
        """The reload timer's work (every STREAMSCORE_FEATURE_RELOAD_S, and at once on a
        control message), in a thread, off the batch path: load a newly recorded nightly
        run's features (before it takes effect at its ``effective_at``; events are served
        by their time, see ``OnlineFeatures.vectors_as_of``) or a changed registry's models.
        The next batch swaps them in (:meth:`apply_reload`), so a batch is scored,
        recorded and monitored wholly with one set of runs and one model set."""
        with self._reload_lock:
            held = None
            with self._pending_lock:
                waiting = self._pending[0] if self._pending else None  # loaded, not yet served
            try:
                held = self.features.fetch_held(pending=waiting)
            except Exception as exc:  # keep serving the loaded run
                # The online store (Redis) or ClickHouse may quote its URL: redacted.
                run_id = self.features.run_id
                log.error("feature refresh failed, keeping run %s: %s", run_id, redact(str(exc)))
            models = None
            stamp = self._registry_stamp()
            if stamp != self._registry_mtime:
                self._registry_mtime = stamp
                try:
                    models = self._load_models()
                except Exception as exc:  # keep serving the loaded set
                    log.error("model reload failed, keeping %s: %s", self._serving(), exc)
            if held is not None or models is not None:
                with self._pending_lock:  # held for a moment: the batch thread takes it too
                    old = self._pending
                    self._pending = (
                        held or (old[0] if old else None),
                        models or (old[1] if old else None),
                    )

    def apply_reload(self) -> None:
        """Swap in what :meth:`check_reload` loaded (in the batch thread, between batches)."""
        with self._pending_lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        held, models = pending
        if held is not None:
            self.features.use_held(held)
            log.info("features from nightly runs by event time: %s", held.describe())
        if models is not None:
            self.holder.swap(lambda: models)
            self.record_models()

    def _serving(self) -> str:
        return ", ".join(self.holder.current.model_ids)

    def on_control(self, message: ControlMessage) -> None:
        """A broadcast promotion or rollback: check the registry now (on the event loop:
        the loading runs in a thread, the next batch swaps)."""
        if message.kind == "models":
            log.info(
                "control: models %s by %s (champion %s): reloading the registry",
                message.action, message.issued_by, message.champion,
            )  # fmt: skip
            self._registry_mtime = -1.0  # differs from any stamp: the models are reloaded
            self.reload_soon()

    def reload_soon(self) -> None:
        asyncio.get_running_loop().run_in_executor(None, self.check_reload)

    # -- the batch -------------------------------------------------------------------
    async def on_assigned(self, partitions: Sequence[tuple[str, int]]) -> None:
        mine = [p for t, p in partitions if t == self.topic]
        if mine and self.dedup:
            loaded = await asyncio.to_thread(live_marks, self.reads, self.event_type, mine)
        else:
            loaded = {p: {} for p in mine}
        for partition, marks in loaded.items():
            self.marks.load(partition, marks)
            log.info(
                "%s[%d]: marks loaded for %d raw partitions", self.topic, partition, len(marks)
            )
        if self.drift is not None:
            self.drift.assigned(mine)

    def prepare(
        self,
        events: Sequence[ValidEvent],
        picked_up_ms: int,
        parsed: Sequence[dict[str, Any]] | None = None,
    ) -> Prepared:
        """The pure part, run in a thread: decode, features, models, rows, drift, and what
        the sink stage gets (rows and drift deltas, encoded)."""
        self.apply_reload()
        decoded = decode_events(events, self.columns, parsed=parsed)
        if not decoded.events:
            return Prepared(decoded, None, None, [], None)
        scored = score_events(
            decoded,
            self.features,
            self.holder.current,
            run=self.run,
            worker_id=self.settings.worker_id,
            picked_up_ms=picked_up_ms,
        )
        closed, deltas = None, None
        if self.drift is not None:
            observation = self.drift.observe_batch(decoded, scored)
            closed = observation.closed if len(observation.closed) else None
            if len(observation.deltas):
                [(_, deltas)] = encode_table(self.drift.delta_table(observation))
        return Prepared(decoded, scored, closed, encode_scored(scored.predictions), deltas)

    async def handle(self, messages: Sequence[Message]) -> None:
        """One batch of raw records, end to end (see the module docstring)."""
        picked_up = now_ms()
        records = [to_raw_record(m) for m in messages]
        accepted, dead = await asyncio.to_thread(ingest_batch, records, self.registry, self.limits)
        handoff = asyncio.ensure_future(self.handoff.deliver(accepted, dead))
        mine = [a for a in accepted if a.schema.event_type == self.event_type]
        events = [scoring_event(a.record, picked_up) for a in mine]
        try:
            # Validation parsed each event already: scoring reads those dicts.
            failed = await self.score(events, picked_up, [a.event for a in mine])
        finally:
            await handoff  # both sends are confirmed before the offsets are stored
        if failed:
            await self.dead_letters(failed)
        self.counts["valid"] += len(accepted)
        self.counts["dead"] += len(dead)
        if self.metrics is not None:
            self.metrics.count("ingest", "valid", len(accepted))
            self.metrics.count_dlq("ingest", (d.reason for d in dead))

    async def score(
        self,
        events: list[ValidEvent],
        picked_up: int,
        parsed: list[dict[str, Any]] | None = None,
    ) -> Sequence[tuple[ValidEvent, str]]:
        """Score, decide and send ``events`` (``parsed``: their values, already decoded);
        returns those that could not be decoded."""
        if self.dedup:
            keep = self.marks.select(events)
            if len(keep) < len(events):
                self.counts["copies_dropped"] += len(events) - len(keep)
                if self.metrics is not None:
                    self.metrics.count("score", "copies_dropped", len(events) - len(keep))
                events = [events[i] for i in keep]
                parsed = None if parsed is None else [parsed[i] for i in keep]
        if not events:
            return ()
        prepared = await asyncio.to_thread(self.prepare, events, picked_up, parsed)
        decoded, scored = prepared.decoded, prepared.scored
        if scored is None:
            return decoded.failed
        if prepared.closed is not None and self.drift is not None:
            summary = await asyncio.to_thread(self.drift.summarise, prepared.closed)
            if self.metrics is not None:
                for w in summary:
                    self.metrics.set_drift(w.model_version, w.feature, w.psi, w.alert)
        t1 = time.perf_counter()
        names = self.holder.current.champion.metadata.feature_names
        self.send(self.predictions_topic, prediction_messages(decoded, scored))
        review = review_messages(decoded, scored, names)
        self.send(self.review_topic, review)
        if review and log.isEnabledFor(logging.DEBUG):
            for _, body in review:
                routed = orjson.loads(body)
                fields = {
                    "event_id": (routed["event"] or {}).get("event_id"),
                    "score": routed["score"],
                    "model_version": routed["model_version"],
                }
                log.debug("review: event %(event_id)s, score %(score).3f", fields, extra=fields)
        for partition, value in prepared.rows:
            self.send_to(self.scored_topic, partition, value)
        if prepared.deltas is not None:
            first = decoded.events[0].handoff_partition
            self.send_to(self.scored_topic, first, prepared.deltas, DRIFT_HEADERS)
        await asyncio.to_thread(self.flush)
        t2 = time.perf_counter()
        if not self.counts["scored"]:
            log.info("scoring: first batch of %d events decided", scored.n_events)
        self.counts["scored"] += scored.n_events
        self.counts["review"] += len(review)
        self.counts["stale_features"] += scored.stale_events
        if (m := self.metrics) is not None:
            m.count_stale_features(scored.stale_events)
            m.observe_stage("feature_lookup", scored.timings_ms["feature_ms"] / 1000)
            m.observe_stage("model", scored.timings_ms["model_ms"] / 1000)
            m.observe_stage("produce_flush", t2 - t1)
            produced = np.fromiter((e.produced_at_ms for e in decoded.events), np.int64)
            m.observe_latency("end_to_end", (now_ms() - produced) / 1000.0)
            m.count("score", "scored", scored.n_events)
            m.count("score", "review", len(review))
        return decoded.failed

    async def dead_letters(self, failed: Sequence[tuple[ValidEvent, str]]) -> None:
        letters = [
            DeadLetter(
                RawRecord(e.source[0], e.source[1], e.source[2], e.produced_at_ms, e.key, e.value),
                UNDECODABLE,
                why,
            )
            for e, why in failed
        ]
        self.counts["undecodable"] += len(letters)
        log.warning("%d events could not be decoded for scoring; sent to the DLQ", len(letters))
        await self.handoff.deliver([], letters, stage="score")

    def send(self, topic: str, messages: Sequence[tuple[bytes | None, bytes]]) -> None:
        for key, value in messages:
            self._produce(topic, value=value, key=key)

    def send_to(
        self,
        topic: str,
        partition: int,
        value: bytes,
        headers: Headers | None = None,
    ) -> None:
        """One message to an explicit partition (scored rows: partition = valid partition)."""
        self._produce(topic, value=value, partition=partition, headers=headers)

    def _produce(self, topic: str, **message: Any) -> None:
        """``produce``, waiting while librdkafka's queue is full."""
        while True:
            try:
                self.producer.produce(topic, on_delivery=self._on_delivery, **message)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _on_delivery(self, err: object, msg: Message) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def flush(self, timeout: float = 120.0) -> None:
        remaining = self.producer.flush(timeout)
        failures, self._failures = self._failures, []
        if remaining or failures:
            raise DeliveryError(
                f"predictions/review: {remaining} unacknowledged, {len(failures)} failed "
                f"({'; '.join(failures[:3])}); offsets not stored"
            )


def register_score_agent(
    app: object,
    settings: Settings,
    gateway: ClickHouseGateway | None,
    scoring: Callable[[], Scoring] | None = None,
    metrics: WorkerMetrics | None = None,
    registry: SchemaRegistry | None = None,
) -> BatchAgent:
    """Attach the scoring agent to the faust ``app``; returns it. Without a ``gateway`` (a
    scoring process on chDB that does not hold it) it reads through the holder's /sql."""
    import faust

    assert isinstance(app, faust.App)
    reads = reads_for(settings, gateway)
    state = scoring() if scoring else Scoring(settings, reads, registry=registry)
    state.metrics = metrics
    if metrics is not None:
        metrics.set_models(state.served_models(), state.served_placement())
        metrics.watch_features(state.features)  # online store up, served run's age
    agent = BatchAgent(
        settings,
        "score",
        list(state.topics),
        state.handle,
        exit_code=EXIT_SINK_FAILED,
        batch_size=settings.score_batch_size,
        batch_seconds=settings.score_batch_seconds,
        on_assigned=state.on_assigned,
        # A dead-lettered 10 MB payload must still be fetchable.
        consumer_config={"max.partition.fetch.bytes": 16 * 1024 * 1024},
        metrics=metrics,
        loop=app.loop,
        beacon=app.beacon,
    )
    agent.scoring = state  # type: ignore[attr-defined]

    async def reload() -> None:
        """Newer nightly features or a changed model registry, loaded off the batch path."""
        await asyncio.to_thread(state.check_reload)

    app.timer(settings.feature_reload_s)(reload)  # a faust timer: the control plane's job

    app.add_dependency(agent)
    return agent
