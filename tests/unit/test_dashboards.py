"""The Grafana dashboard asks only for what streamscore exports, and its SQL runs.

* Every PromQL expression is parsed (promql-parser, the Prometheus grammar) and every
  series it selects must be one a worker's metrics registry exposes (``WorkerMetrics``,
  read from the registry itself, histogram and counter suffixes included) or one Prometheus
  adds per target (``up``…), with the labels it matches on, groups by or joins on, and
  with label values streamscore uses where the code names them (stages, outcomes).
* Every ClickHouse query runs, macros expanded as the Grafana plugin does, through the
  analysts' read-only path on chDB over the migrated schema with a few rows, and answers
  what its panel says.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import promql_parser as pp
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from streams.clickhouse.gateway import ClickHouseGateway
from streams.monitoring.metrics import BATCH_STAGES, LATENCY_STAGES, OUTCOMES, WorkerMetrics
from streams.settings import Settings
from streams.sql import ReadOnlySQL

INFRA = Path(__file__).resolve().parents[2] / "infra"
DASHBOARD = INFRA / "grafana" / "dashboards" / "streamscore.json"
DATASOURCES = INFRA / "grafana" / "provisioning" / "datasources" / "streamscore.yaml"
PROMETHEUS = INFRA / "prometheus" / "prometheus.yml"
TARGETS = INFRA / "prometheus" / "targets"

# Grafana's interval variables, replaced by a duration before parsing.
GRAFANA_DURATIONS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


# ---- what the worker exports ---------------------------------------------------------------


def _families(collector: Any) -> Iterator[tuple[str, str, tuple[str, ...]]]:
    """``(name, type, label names)`` of each family a collector exposes."""
    if isinstance(collector, MetricWrapperBase):
        # prometheus_client has no public accessor for a metric's label names before a
        # child exists; these attributes have been stable since 0.4.
        yield collector._name, collector._type, tuple(collector._labelnames)
        return
    for family in collector.collect():
        labels = getattr(family, "_labelnames", None)
        if labels is None:  # a plain Metric: the labels its samples carry
            labels = sorted({name for s in family.samples for name in s.labels})
        yield family.name, family.type, tuple(labels)


SUFFIXES = {
    "counter": {"_total": (), "_created": ()},
    "gauge": {"": ()},
    "histogram": {"_bucket": ("le",), "_sum": (), "_count": (), "_created": ()},
    "summary": {"": ("quantile",), "_sum": (), "_count": (), "_created": ()},
    "info": {"_info": ()},
}


def exported_series(registry: CollectorRegistry) -> dict[str, tuple[str, frozenset[str]]]:
    """Sample name → (family name, label names) for everything ``registry`` exposes."""
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for collector in list(registry._collector_to_names):  # no public list of collectors
        for name, kind, labels in _families(collector):
            for suffix, extra in SUFFIXES[kind].items():
                out[name + suffix] = (name, frozenset(labels) | frozenset(extra))
    return out


def target_labels() -> tuple[frozenset[str], frozenset[str]]:
    """(label names Prometheus puts on every scraped series, the job names it scrapes)."""
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = frozenset(job["job_name"] for job in config["scrape_configs"])
    labels = {"job", "instance"}
    for path in TARGETS.glob("*.json"):
        for group in json.loads(path.read_text()):
            labels |= set(group.get("labels", {}))
    return frozenset(labels), jobs


# Series Prometheus itself records for every target.
PER_TARGET = ("up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added")


def known_values(family: str, label: str) -> frozenset[str] | None:
    """The values of ``label`` the code enumerates for ``family``, None when it does not."""
    stages = frozenset(BATCH_STAGES) | frozenset(LATENCY_STAGES)
    table = {
        ("streamscore_events", "outcome"): frozenset(OUTCOMES),
        ("streamscore_events", "stage"): frozenset(BATCH_STAGES),
        ("streamscore_stage_seconds", "stage"): stages,
        ("streamscore_event_latency_seconds", "stage"): frozenset(LATENCY_STAGES),
        ("streamscore_batch_size", "stage"): frozenset(BATCH_STAGES),
    }
    return table.get((family, label))


# ---- checking an expression ----------------------------------------------------------------


@dataclass
class Check:
    """What one PromQL expression selects, and what is wrong with it."""

    series: dict[str, tuple[str, frozenset[str]]]
    jobs: frozenset[str]
    problems: list[str] = field(default_factory=list)
    metrics: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)  # matched on, grouped by, joined on

    def need(self, labels: list[str] | tuple[str, ...], have: frozenset[str], where: str) -> None:
        self.labels.update(labels)
        if missing := sorted(set(labels) - have):
            self.problems.append(f"{where}: {missing} not among the labels {sorted(have)}")

    def selector(self, vs: Any) -> frozenset[str]:
        name = vs.name
        matchers = list(vs.matchers.matchers)
        if name is None:
            named = [m.value for m in matchers if m.name == "__name__" and m.op == pp.MatchOp.Equal]
            name = named[0] if named else None
        if name is None or name not in self.series:
            self.problems.append(f"{name!r} is not a series the worker or Prometheus exports")
            return frozenset()
        family, have = self.series[name]
        self.metrics.add(name)
        for m in matchers:
            if m.name == "__name__":
                continue
            self.need([m.name], have, f"{name}{{{m.name}}}")
            values = self.jobs if m.name == "job" else known_values(family, m.name)
            if values is None or m.op in (pp.MatchOp.NotEqual, pp.MatchOp.NotRe):
                continue
            wanted = [m.value] if m.op == pp.MatchOp.Equal else _alternatives(m.value)
            if unknown := sorted(set(wanted or []) - values):
                self.problems.append(f"{name}{{{m.name}}}: {unknown} not among {sorted(values)}")
        return have

    def labels_of(self, e: Any) -> frozenset[str] | None:
        """The label names of ``e``'s result (None: a scalar), recording what is wrong."""
        if isinstance(e, pp.VectorSelector):
            return self.selector(e)
        if isinstance(e, pp.MatrixSelector):
            return self.selector(e.vector_selector)
        if isinstance(e, pp.SubqueryExpr | pp.ParenExpr | pp.UnaryExpr):
            return self.labels_of(e.expr)
        if isinstance(e, pp.NumberLiteral | pp.StringLiteral):
            return None
        if isinstance(e, pp.Call):
            return self.call(e)
        if isinstance(e, pp.AggregateExpr):
            return self.aggregate(e)
        if isinstance(e, pp.BinaryExpr):
            return self.binary(e)
        self.problems.append(f"no rule for {type(e).__name__} in {e}")
        return frozenset()

    def call(self, e: Any) -> frozenset[str] | None:
        args = [self.labels_of(a) for a in e.args]
        vectors = [a for a in args if a is not None]
        name = e.func.name
        if name in ("scalar", "time"):
            return None
        if name == "histogram_quantile":
            inner = vectors[0] if vectors else frozenset()
            self.need(["le"], inner, f"histogram_quantile over {e.args[1]}")
            return inner - {"le"}
        return vectors[0] if vectors else frozenset()

    def aggregate(self, e: Any) -> frozenset[str]:
        if e.param is not None:
            self.labels_of(e.param)
        inner = self.labels_of(e.expr) or frozenset()
        op = str(e.op)
        keeps_series = op in ("topk", "bottomk", "limitk", "limit_ratio")
        if e.modifier is None:
            return inner if keeps_series else frozenset()
        labels = list(e.modifier.labels)
        self.need(labels, inner, f"{op} {str(e.modifier.type).split('.')[-1].lower()}")
        if keeps_series:
            return inner
        if e.modifier.type == pp.AggModifierType.By:
            return frozenset(labels)
        return inner - set(labels)

    def binary(self, e: Any) -> frozenset[str] | None:
        left, right = self.labels_of(e.lhs), self.labels_of(e.rhs)
        if left is None or right is None:
            return right if left is None else left
        modifier = e.modifier
        matching = modifier.matching if modifier is not None else None
        result = left | right if str(e.op) == "or" else left
        if matching is not None:
            on = list(matching.labels)
            self.need(on, left, f"left of {e.op} on/ignoring")
            self.need(on, right, f"right of {e.op} on/ignoring")
            one_to_one = modifier.card == pp.VectorMatchCardinality.OneToOne
            if one_to_one and matching.type == pp.LabelModifierType.Include:
                result = frozenset(on)
            elif one_to_one:
                result = left - set(on)
        if modifier is not None and modifier.group_labels:
            group = list(modifier.group_labels)
            many_to_one = modifier.card == pp.VectorMatchCardinality.ManyToOne
            self.need(group, right if many_to_one else left, f"{e.op} group_left/right")
            result = (left if many_to_one else right) | set(group)
        return result


def _alternatives(regex: str) -> list[str] | None:
    """A regex of plain alternatives (``a|b``) as its words; None for any other regex."""
    return regex.split("|") if re.fullmatch(r"[\w|]+", regex) else None


def check(expr: str, series: dict[str, tuple[str, frozenset[str]]], jobs: frozenset[str]) -> Check:
    for variable, duration in GRAFANA_DURATIONS.items():
        expr = expr.replace(variable, duration)
    result = Check(series, jobs)
    try:
        parsed = pp.parse(expr)
    except ValueError as exc:
        result.problems.append(f"does not parse: {exc}")
        return result
    result.labels_of(parsed)
    return result


@pytest.fixture(scope="module")
def series() -> dict[str, tuple[str, frozenset[str]]]:
    found = exported_series(WorkerMetrics(worker_id="w", app_id="a").registry)
    per_target, _jobs = target_labels()
    # Prometheus adds the target's labels to every series it scrapes.
    out = {name: (family, labels | per_target) for name, (family, labels) in found.items()}
    out.update({name: (name, per_target) for name in PER_TARGET})
    return out


@pytest.fixture(scope="module")
def jobs() -> frozenset[str]:
    return target_labels()[1]


# ---- the dashboard -------------------------------------------------------------------------


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def targets(kind: str) -> list[tuple[str, dict[str, Any]]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target)
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
        if target["datasource"]["type"] == kind
    ]


PROMQL = targets("prometheus")
CLICKHOUSE = targets("grafana-clickhouse-datasource")


def test_every_query_names_a_provisioned_data_source() -> None:
    provisioned = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    uids = {(d["type"], d["uid"]) for d in provisioned}
    dashboard = json.loads(DASHBOARD.read_text())
    used = {
        (t["datasource"]["type"], t["datasource"]["uid"])
        for p in panels(dashboard)
        for t in p.get("targets", [])
    }
    assert used == uids  # both used, nothing else
    assert len(PROMQL) >= 10 and len(CLICKHOUSE) >= 5
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    assert json.loads(DASHBOARD.read_text())["uid"] == "streamscore"


@pytest.mark.parametrize(("title", "target"), PROMQL, ids=[f"{t}/{x['refId']}" for t, x in PROMQL])
def test_every_promql_series_and_label_is_exported(
    title: str,
    target: dict[str, Any],
    series: dict[str, tuple[str, frozenset[str]]],
    jobs: frozenset[str],
) -> None:
    result = check(target["expr"], series, jobs)
    assert result.problems == [], f"{title}: {target['expr']}"
    assert result.metrics, f"{title} selects no series"


def test_the_dashboard_covers_what_operators_ask_for(
    series: dict[str, tuple[str, frozenset[str]]], jobs: frozenset[str]
) -> None:
    used: dict[str, set[str]] = {}
    for _title, target in PROMQL:
        result = check(target["expr"], series, jobs)
        for metric in result.metrics:
            used.setdefault(metric, set()).update(result.labels)
    wanted = {
        "streamscore_events_total": {"outcome", "reason"},  # outcomes, DLQ by reason
        "streamscore_event_latency_seconds_bucket": {"le", "stage"},  # decision latency
        "streamscore_stage_seconds_bucket": {"le", "stage"},
        "streamscore_consumer_lag": {"partition", "topic", "group"},
        "streamscore_drift_psi": {"feature", "model_version"},
        "streamscore_drift_alert": {"feature"},
        "streamscore_model_info": {"provider", "role", "model_version"},
        "up": {"job"},
    }
    for metric, labels in wanted.items():
        assert labels <= used.get(metric, set()), metric
    sql = " ".join(t["rawSql"] for _title, t in CLICKHOUSE)
    for table in ("predictions", "drift_stats", "feature_runs"):
        assert f"streamscore.{table}" in sql


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rate(streamscore_event_total[5m])", "'streamscore_event_total' is not a series"),
        ("streamscore_stage_seconds", "'streamscore_stage_seconds' is not a series"),
        ("sum by (reasn) (rate(streamscore_events_total[5m]))", "['reasn'] not among"),
        ('streamscore_events_total{outcome="dlqq"}', "['dlqq'] not among"),
        ('streamscore_events_total{outcome=~"dlq|lost"}', "['lost'] not among"),
        ('streamscore_event_latency_seconds_bucket{stage="sink"}', "['sink'] not among"),
        (
            "histogram_quantile(0.99, sum by (stage) (rate(streamscore_stage_seconds_bucket[5m])))",
            "histogram_quantile over",
        ),
        ("sum by (partition) (sum by (group) (streamscore_consumer_lag))", "['partition']"),
        (
            "streamscore_drift_psi and on (worker_id) streamscore_drift_alert",
            "['worker_id'] not among",
        ),
        ('up{job="nope"}', "['nope'] not among"),
        ("sum(rate(x[5m]", "does not parse"),
    ],
)
def test_the_check_finds_what_the_worker_does_not_export(
    expr: str, problem: str, series: dict[str, tuple[str, frozenset[str]]], jobs: frozenset[str]
) -> None:
    result = check(expr, series, jobs)
    assert any(problem in p for p in result.problems), result.problems


def test_series_come_from_the_registry_with_their_suffixes() -> None:
    metrics = WorkerMetrics()
    found = exported_series(metrics.registry)
    assert found["streamscore_events_total"][1] == {"stage", "outcome", "reason"}
    assert found["streamscore_event_latency_seconds_bucket"][1] == {"stage", "le"}
    assert found["streamscore_event_latency_seconds_count"][1] == {"stage"}
    assert found["streamscore_consumer_lag"][1] == {"group", "topic", "partition"}
    assert "streamscore_events" not in found and "streamscore_stage_seconds" not in found
    # A metric added to the registry is seen without editing this test.
    from prometheus_client import Gauge

    Gauge("streamscore_x", "x", ("provider",), registry=metrics.registry)
    assert exported_series(metrics.registry)["streamscore_x"][1] == {"provider"}


# ---- ClickHouse panels ---------------------------------------------------------------------

NOW = datetime.now(UTC).replace(microsecond=0)
FROM, TO = NOW - timedelta(hours=1), NOW + timedelta(minutes=1)
INTERVAL_S = 60


def expand(sql: str, database: str) -> str:
    """The Grafana ClickHouse plugin's macros, as it expands them, and the test's database."""
    start, end = int(FROM.timestamp()), int(TO.timestamp())
    sql = re.sub(
        r"\$__timeFilter\((\w+)\)",
        rf"\1 >= toDateTime({start}) AND \1 <= toDateTime({end})",
        sql,
    )
    sql = re.sub(
        r"\$__timeInterval\((\w+)\)",
        rf"toStartOfInterval(toDateTime(\1), INTERVAL {INTERVAL_S} second)",
        sql,
    )
    sql = sql.replace("$__interval_s", str(INTERVAL_S))
    assert "$" not in sql, f"a macro this test does not expand: {sql}"
    return sql.replace("streamscore.", f"{database}.")


PREDICTION_COLUMNS = (
    "event_id", "decision", "decided", "run", "produced_at", "scored_at", "inserted_at",
    "model_version", "topic", "partition", "offset",
)  # fmt: skip


@pytest.fixture(scope="module")
def reader(chdb_settings: Settings) -> Iterator[ReadOnlySQL]:
    """The migrated schema with a few rows: three decisions 100/200/900 ms after they were
    produced, one replayed row, a drifted feature, one failed and one successful run."""
    gateway = ClickHouseGateway.open(chdb_settings)
    t = NOW - timedelta(minutes=5)
    ms = timedelta(milliseconds=1)
    rows = [
        ["e1", "approve", True, "live", t, t + 50 * ms, t + 100 * ms, "m1", "raw", 0, 1],
        ["e2", "decline", True, "live", t, t + 50 * ms, t + 200 * ms, "m1", "raw", 0, 2],
        ["e3", "approve", True, "live", t, t + 50 * ms, t + 900 * ms, "m1", "raw", 0, 3],
        ["e3", "approve", False, "live", t, t + 50 * ms, t + 900 * ms, "m2", "raw", 0, 3],
        ["e4", "review", True, "replay-1", t, t + 50 * ms, t + 9000 * ms, "m1", "raw", 0, 4],
    ]
    try:
        gateway.insert_columns("predictions", list(zip(*rows, strict=True)), PREDICTION_COLUMNS)
        gateway.insert_columns(
            "drift_baselines",
            [["m1"], ["amount"], [0], [[0.0, 1.0, 2.0]], [[0.5, 0.5]], [0.1], [1000], [20.0]],
            ["model_version", "feature", "feature_index", "edges", "expected", "threshold",
             "reference_rows", "critical"],
        )  # fmt: skip
        gateway.insert_columns(
            "drift_deltas",
            [["m1"], ["amount"], [0], [t], [60], [0], [""], [0], [0], [400], [0], [[400, 0]]],
            ["model_version", "feature", "feature_index", "window_start", "window_seconds",
             "partition", "source", "first_offset", "last_offset", "rows", "missing", "counts"],
        )  # fmt: skip
        runs = [
            ["r1", date.today(), "fraud_v1", "failed", NOW - timedelta(hours=1), NOW, "dbt failed"],
            ["r0", date.today(), "fraud_v1", "success", NOW - timedelta(hours=3),
             NOW - timedelta(hours=2), ""],
        ]  # fmt: skip
        gateway.insert_columns(
            "feature_runs",
            list(zip(*runs, strict=True)),
            ["run_id", "nightly_date", "feature_service", "status", "started_at", "finished_at",
             "error"],
        )  # fmt: skip
    finally:
        gateway.close()
    yield ReadOnlySQL.for_settings(chdb_settings)


def answer(reader: ReadOnlySQL, title: str) -> list[dict[str, Any]]:
    (sql,) = [t["rawSql"] for t_title, t in CLICKHOUSE if t_title == title]
    output = reader.query(expand(sql, reader.database), max_rows=1000)
    return [dict(zip(output.columns, row, strict=True)) for row in output.rows]


@pytest.mark.parametrize(("title", "target"), CLICKHOUSE, ids=[t for t, _x in CLICKHOUSE])
def test_every_clickhouse_panel_runs_read_only(
    title: str, target: dict[str, Any], reader: ReadOnlySQL
) -> None:
    output = reader.query(expand(target["rawSql"], reader.database), max_rows=1000)
    if target["queryType"] == "timeseries":
        assert output.columns[0] == "time" and target["format"] == 0
        assert output.rows, f"{title}: no rows for the planted data"
    else:
        assert target["queryType"] == "table" and target["format"] == 1


def test_queryable_latency_is_inserted_minus_produced_of_live_decisions(
    reader: ReadOnlySQL,
) -> None:
    (row,) = answer(reader, "Queryable latency p50 / p99")
    assert row["p50"] == pytest.approx(0.2)
    assert 0.2 < row["p99"] <= 0.9  # the replay's 9 s is not in it


def test_decisions_per_second_count_acted_on_live_decisions(reader: ReadOnlySQL) -> None:
    rows = answer(reader, "Decisions per second by decision")
    by = {r["decision"]: r["per_second"] for r in rows}
    assert by == {"approve": pytest.approx(2 / INTERVAL_S), "decline": pytest.approx(1 / 60)}


def test_drift_table_shows_each_feature_with_its_threshold(reader: ReadOnlySQL) -> None:
    (row,) = answer(reader, "Drift per feature against its threshold (latest window)")
    assert (row["model_version"], row["feature"], row["psi_threshold"]) == ("m1", "amount", 0.1)
    assert row["latest_psi"] > row["psi_threshold"] and row["alerting"] == 1
    assert row["window_rows"] == 400


def test_nightly_panels_show_runs_and_the_last_success(reader: ReadOnlySQL) -> None:
    (stat,) = answer(reader, "Hours since the last successful nightly run")
    assert stat["hours_since_success"] == pytest.approx(2.0, abs=0.1)
    runs = answer(reader, "Nightly runs")
    assert [(r["run_id"], r["status"]) for r in runs] == [("r1", "failed"), ("r0", "success")]
    assert runs[0]["error"] == "dbt failed" and runs[1]["seconds"] == pytest.approx(3600)
