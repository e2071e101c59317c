"""Labels end to end: scored transactions, their late labels, label-based views, promotion.

On the module-scoped scoring world (conftest): one worker run that ingests and scores
transactions and ingests hand-made labels for them, then the labels handler called
in-process on the label valid topic.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from streams.kafka import make_producer
from streams.settings import Settings
from streams.simulate.records import SimRecord, SimulationConfig, schema_headers, simulate_records
from streams.topics import LABELS_RAW, PREDICTIONS, raw_topic, topic_name, valid_topic
from tests.integration.conftest import FEAST_STACK_MARKS, read_topic

pytestmark = FEAST_STACK_MARKS


def transactions(count: int, seed: int) -> list[SimRecord]:
    config = SimulationConfig(
        start=datetime.now(UTC), accounts=800, seed=seed, fraud_rate=0.05, labels=False
    )
    out: list[SimRecord] = []
    for item in simulate_records(config):
        out.append(item)
        if len(out) == count:
            break
    return out


def label(event: dict[str, Any], is_fraud: bool, at: datetime, source: str) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": "label",
        "schema_version": 1,
        "label_time": at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "transaction_id": event["event_id"],
        "account_id": event["account_id"],
        "is_fraud": is_fraud,
        "source": source,
        "fraud_type": "stolen_card" if is_fraud else None,
    }


def produce(settings: Settings, topic: str, items: list[tuple[bytes, bytes, Any]]) -> None:
    producer = make_producer(settings)
    for key, value, headers in items:
        producer.produce(topic, value=value, key=key, headers=list(headers))
    assert producer.flush(60) == 0


def query(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    from streams.clickhouse import connect

    client = connect(settings)
    try:
        return list(client.query(sql.replace("{db}", settings.clickhouse_database)).result_rows)
    finally:
        client.close()


def python_metrics(rows: list[tuple[Any, ...]]) -> tuple[int, int, float, float, float]:
    """labelled, positives, precision, recall (decline = positive), ROC AUC."""
    from sklearn.metrics import roc_auc_score

    y = [bool(r[2]) for r in rows]
    declined = [r[1] == "decline" for r in rows]
    tp = sum(d and t for d, t in zip(declined, y, strict=True))
    auc = float(roc_auc_score(y, [float(r[0]) for r in rows]))
    return len(rows), sum(y), tp / max(sum(declined), 1), tp / max(sum(y), 1), auc


def test_labels_land_once_views_match_python_and_promote_needs_evidence(
    scoring_settings: Settings, start_scorer: Callable[..., subprocess.Popen[bytes]]
) -> None:
    from streams.agents.labels import LabelStore
    from streams.cli.model import model
    from streams.clickhouse.gateway import ClickHouseGateway
    from streams.scoring.registry import load_registry, registry_path

    settings = scoring_settings
    items = transactions(500, seed=21)
    produce(settings, raw_topic(settings), [(i.key or b"", i.value, i.headers) for i in items])

    # Labels for 300 of them: fraud scenarios and a random 5% are fraud. For 40, an earlier
    # label says the opposite: the later one must win.
    rng = random.Random(21)
    now = datetime.now(UTC)
    labels: list[dict[str, Any]] = []
    truth: dict[str, bool] = {}
    for i, item in enumerate(items[:300]):
        assert item.event is not None
        fraud = item.scenario is not None or rng.random() < 0.05
        truth[item.event["event_id"]] = fraud
        if i < 40:
            labels.append(label(item.event, not fraud, now, "customer_report"))
        labels.append(label(item.event, fraud, now + timedelta(hours=1), "chargeback"))
    headers = schema_headers("label")
    labels_raw = topic_name(settings, LABELS_RAW)
    produce(
        settings, labels_raw, [(x["account_id"].encode(), orjson.dumps(x), headers) for x in labels]
    )

    worker = start_scorer(STREAMSCORE_AGENTS="score,sink")
    messages = read_topic(settings, valid_topic(settings, "label"), len(labels), settle=None)
    predictions = read_topic(settings, topic_name(settings, PREDICTIONS), len(items), settle=None)
    worker.send_signal(signal.SIGTERM)  # chDB: one process at a time
    assert worker.wait(60) == 0
    assert len(messages) == len(labels) and len(predictions) == len(items)
    scored = query(settings, "select uniqExact(event_id) from {db}.predictions")[0][0]
    assert scored == len(items)

    gateway = ClickHouseGateway.open(settings)
    try:
        store = LabelStore(settings, gateway)
        asyncio.run(store.handle(messages))
        asyncio.run(store.handle(messages))  # the same batch again: nothing new
        asyncio.run(store.handle(messages[:100]))
    finally:
        gateway.close()
    assert store.counts == {"stored": len(labels), "already_stored": len(labels) + 100,
                            "undecodable": 0}  # fmt: skip
    count, unique = query(
        settings, "select count(), uniqExact(topic, partition, offset) from {db}.labels"
    )[0]
    assert count == unique == len(labels)
    assert query(settings, "select countIf(topic != '" + labels_raw + "') from {db}.labels") == [
        (0,)
    ]
    latest = dict(query(settings, "select transaction_id, is_fraud from {db}.latest_labels"))
    assert latest == truth

    # model_performance_daily against the same rows computed in Python.
    perf = query(
        settings,
        "select model_version, sum(labelled_events), sum(positives), sum(true_positives), "
        "sum(declined), any(precision), any(recall), any(roc_auc), uniqExact(day) "
        "from {db}.model_performance_daily group by model_version",
    )
    assert len(perf) == 2
    for version, labelled, positives, tp, declined, precision, recall, auc, days in perf:
        rows = query(
            settings,
            "select p.score, toString(p.decision), l.is_fraud from {db}.predictions as p final "
            f"inner join {{db}}.latest_labels as l on p.event_id = l.transaction_id "
            f"where p.model_version = '{version}'",
        )
        n, pos, py_precision, py_recall, py_auc = python_metrics(rows)
        assert (labelled, positives) == (n, pos) == (300, sum(truth.values()))
        if days == 1:  # one day of event_time: the view's row is the whole set
            assert precision == pytest.approx(py_precision) or declined == 0
            assert recall == pytest.approx(py_recall)
            assert auc == pytest.approx(py_auc, abs=1e-9)
        assert tp / max(declined, 1) == pytest.approx(py_precision)

    # Promotion: the shadow was compared on every scored event.
    config = load_registry(registry_path(settings.models_dir))
    shadow = config.challengers[0].model
    (events,) = query(settings, "select events from {db}.model_comparison")[0]
    assert events == len(items)

    def promote(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(model, ["promote", shadow, *args], obj=settings)
        return result.exit_code, result.output

    code, out = promote("--min-compared", str(events + 1))
    assert code == 1 and f"on {events:,} events, fewer than" in out, out
    assert load_registry(registry_path(settings.models_dir)).champion == config.champion
    code, out = promote("--min-compared", str(events))
    assert code == 0 and f"{events:,} events compared" in out and "ROC AUC" in out, out
    assert load_registry(registry_path(settings.models_dir)).champion == shadow
