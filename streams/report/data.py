"""The report's numbers: ClickHouse queries → frozen dataclasses, nothing rendered here.

Every query covers live traffic (``run = 'live'``: replays re-score old events, and their
latency means nothing) scored within ``[start, end)``, reads ``predictions FINAL`` so a
re-delivered event counts once, and uses decided rows (one per event) unless it compares
models. The champion is the model that decided most events in the window.

A PSI is only a statistic over enough rows: windows under the drift alert rule's minimum
(``streams.monitoring.drift.ALERT_MIN_ROWS``) keep their row count but no plotted value,
since a window of 1-3 events reaches a PSI near 10 by sampling alone. Score histograms
that have no training baseline to bin on use log10 bins fitted to the scores seen: a
fraud model's scores sit around 1e-6…1e-2, all in the first bin of a uniform 0-1 axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from streams.clickhouse.client import quote_identifier
from streams.errors import ModelError
from streams.monitoring.drift import ALERT_MIN_ROWS, SCORE, psi
from streams.report.source import Rows, column_names, table_exists
from streams.scoring.metadata import ModelMetadata

__all__ = [
    "ALERT_MIN_ROWS",
    "DECISIONS",
    "PSI_ALERT",
    "PSI_WATCH",
    "SCORE_FEATURE",
    "Comparison",
    "DriftSeries",
    "HourlyDecisions",
    "HourlyLatency",
    "LatencyRow",
    "ReportData",
    "ScoreDistribution",
    "collect",
    "hours_between",
    "load_baseline",
    "log_bins",
    "proportions",
    "psi",
]

DECISIONS = ("approve", "review", "decline")
# Log10 score bins: the query bins at LOG_STEPS per decade down to 10**LOG_FLOOR (lower
# scores, zero included, share the lowest bin); log_bins merges them to at most MAX_BINS.
LOG_STEPS = 4
LOG_FLOOR = -9
MAX_BINS = 24
PERCENTILES = (0.5, 0.9, 0.99)
TOP_FEATURES = 6
SCORE_FEATURE = SCORE  # the drift code's pseudo-feature for the score
# PSI rules of thumb, drawn on the drift charts.
PSI_WATCH, PSI_ALERT = 0.1, 0.25
_WINDOW = (
    "run = 'live' and scored_at >= fromUnixTimestamp64Milli({start_ms:Int64}) "
    "and scored_at < fromUnixTimestamp64Milli({end_ms:Int64})"
)


@dataclass(frozen=True, slots=True)
class ScoreDistribution:
    """Live score proportions of one model on the baseline's (quantile) bins, or on log10
    bins without a baseline (``log_scale``). ``edges`` are the interior cut points: bin 0
    is below ``edges[0]``. ``psi`` is None without a baseline or under ``ALERT_MIN_ROWS``
    events."""

    model_version: str
    edges: tuple[float, ...]
    live: tuple[float, ...]
    baseline: tuple[float, ...] | None
    events: int
    psi: float | None
    baseline_source: str
    log_scale: bool = False


@dataclass(frozen=True, slots=True)
class HourlyDecisions:
    hours: tuple[str, ...]
    counts: dict[str, tuple[int, ...]]  # decision → count per hour


@dataclass(frozen=True, slots=True)
class LatencyRow:
    """Percentiles of one latency, in milliseconds."""

    name: str
    what: str
    p50: float
    p90: float
    p99: float


@dataclass(frozen=True, slots=True)
class HourlyLatency:
    hours: tuple[str, ...]
    p50: tuple[float | None, ...]
    p99: tuple[float | None, ...]


@dataclass(frozen=True, slots=True)
class Comparison:
    """A challenger against the champion on the same events."""

    champion: str
    challenger: str
    role: str
    events: int
    agreement: float
    confusion: dict[tuple[str, str], int]  # (champion decision, challenger decision) → events
    edges: tuple[float, ...]  # log10 bins shared by both (see log_bins)
    champion_hist: tuple[float, ...]  # proportions on those bins
    challenger_hist: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class DriftSeries:
    """PSI of one monitored column per closed window. A window without a row for this
    column has PSI NaN and 0 rows."""

    model_version: str
    feature: str
    windows: tuple[datetime, ...]  # window starts, UTC
    window_seconds: int
    psi: tuple[float, ...]
    rows: tuple[int, ...]
    alerts: tuple[bool, ...]
    min_rows: int = ALERT_MIN_ROWS

    def measured(self, i: int) -> bool:
        """Whether window ``i`` has enough rows for its PSI to mean anything."""
        return self.rows[i] >= self.min_rows and math.isfinite(self.psi[i])

    @property
    def plotted(self) -> tuple[float | None, ...]:
        """The PSI of each measured window, None for the others."""
        return tuple(p if self.measured(i) else None for i, p in enumerate(self.psi))

    @property
    def thin(self) -> tuple[int, ...]:
        """Indices of the windows with too few events to plot."""
        return tuple(i for i in range(len(self.windows)) if not self.measured(i))

    @property
    def peak(self) -> float:
        """The highest PSI over measured windows (0 when none is)."""
        return max((p for p in self.plotted if p is not None), default=0.0)


@dataclass(frozen=True, slots=True)
class ReportData:
    """Everything one report shows."""

    start: datetime
    end: datetime
    database: str
    events: int
    declines: int
    reviews: int
    human_reviews: int
    dead_letters: int
    champion: str | None
    scores: ScoreDistribution | None
    decisions: HourlyDecisions
    latency: tuple[LatencyRow, ...]
    latency_hourly: HourlyLatency
    comparisons: tuple[Comparison, ...]
    drift_available: bool
    drift: tuple[DriftSeries, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    min_rows: int = ALERT_MIN_ROWS


# ---- helpers -------------------------------------------------------------------------


def proportions(counts: Sequence[int]) -> tuple[float, ...]:
    total = sum(counts)
    return tuple(c / total if total else 0.0 for c in counts)


def hours_between(start: datetime, end: datetime) -> list[str]:
    """Every hour label (``YYYY-mm-dd HH:00``, UTC) from ``start``'s hour to ``end``'s."""
    hour = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    out = []
    while hour < end:
        out.append(f"{hour:%Y-%m-%d %H:00}")
        hour += timedelta(hours=1)
    return out


def log_bins(
    counts: dict[str, dict[int, int]], steps: int = LOG_STEPS, max_bins: int = MAX_BINS
) -> tuple[tuple[float, ...], dict[str, tuple[int, ...]]]:
    """Log10 bins covering every model's scores: ``counts`` maps a model to its counts by
    fine bin ``b`` (scores in ``[10**(b/steps), 10**((b+1)/steps))``, as ``_LOG_BIN``
    computes them). Returns the interior edges and each model's counts on the merged bins:
    from the lowest non-empty fine bin to the highest, merged by 2 or 4 (edges stay on
    quarter, half or whole decades) until at most ``max_bins`` remain."""
    seen = [b for per in counts.values() for b, n in per.items() if n > 0]
    if not seen:
        return (), dict.fromkeys(counts, (0,))
    lo, hi = min(seen), max(seen)
    group = 1
    while group < steps and (hi // group - lo // group + 1) > max_bins:
        group *= 2
    first, last = lo // group, hi // group
    edges = tuple(10 ** (g * group / steps) for g in range(first + 1, last + 1))
    merged = {}
    for model, per in counts.items():
        out = [0] * (last - first + 1)
        for b, n in per.items():
            out[min(max(b // group, first), last) - first] += n
        merged[model] = tuple(out)
    return edges, merged


def load_baseline(
    models_dir: Path, model_version: str, card_path: str | None
) -> tuple[tuple[float, ...], tuple[float, ...], str] | None:
    """The champion's training score baseline ``(edges, proportions, sidecar path)`` from
    ``<models_dir>/artifacts/<model_version>.json`` (or next to its card); None without one."""
    candidates = [models_dir / "artifacts" / f"{model_version}.json"]
    if card_path:
        candidates.append(Path(card_path.removesuffix(".card.md") + ".json"))
    for path in candidates:
        if not path.exists():
            continue
        try:
            meta = ModelMetadata.read(path)
        except ModelError:
            continue
        if meta.score_baseline is not None:
            return meta.score_baseline.edges, meta.score_baseline.proportions, str(path)
    return None


# ---- queries -------------------------------------------------------------------------


def collect(
    rows: Rows,
    database: str,
    models_dir: Path,
    start: datetime,
    end: datetime,
    min_rows: int = ALERT_MIN_ROWS,
) -> ReportData:
    """Run every report query for ``[start, end)`` and shape the results. A PSI over
    fewer than ``min_rows`` events (the drift alert rule's minimum) is not shown."""
    db = quote_identifier(database)
    window = {"start_ms": int(start.timestamp() * 1000), "end_ms": int(end.timestamp() * 1000)}
    notes: list[str] = []

    totals = rows(
        "select count() as events, countIf(decision = 'decline') as declines, "  # noqa: S608 - checked identifier
        "countIf(decision = 'review') as reviews, countIf(human_review) as human_reviews "
        f"from {db}.predictions final where decided and {_WINDOW}",
        window,
    )[0]
    dead = rows(
        f"select count() as n from {db}.dlq_events final "  # noqa: S608 - checked identifier
        "where sunk_at >= fromUnixTimestamp64Milli({start_ms:Int64}) "
        "and sunk_at < fromUnixTimestamp64Milli({end_ms:Int64})",
        window,
    )[0]
    champions = rows(
        "select toString(model_version) as model_version, count() as n "  # noqa: S608 - checked identifier
        f"from {db}.predictions final where model_role = 'champion' and {_WINDOW} "
        "group by model_version order by n desc limit 1",
        window,
    )
    champion = str(champions[0]["model_version"]) if champions else None

    drift_available = table_exists(rows, database, "drift_stats")
    scores = None
    if champion is not None:
        scores = _score_distribution(rows, db, models_dir, champion, window, min_rows)
        if scores.baseline is None:
            notes.append(
                f"no training score baseline for {champion} in {models_dir}/artifacts: "
                "its live distribution is shown on log10 bins"
            )

    return ReportData(
        start=start,
        end=end,
        database=database,
        events=int(totals["events"]),
        declines=int(totals["declines"]),
        reviews=int(totals["reviews"]),
        human_reviews=int(totals["human_reviews"]),
        dead_letters=int(dead["n"]),
        champion=champion,
        scores=scores,
        decisions=_decisions(rows, db, window, start, end),
        latency=_latency(rows, db, window),
        latency_hourly=_latency_hourly(rows, db, window, start, end),
        comparisons=_comparisons(rows, db, window),
        drift_available=drift_available,
        drift=_drift(rows, database, window, champion, min_rows) if drift_available else (),
        notes=tuple(notes),
        min_rows=min_rows,
    )


# A score's fine log10 bin (see log_bins): zero and scores below 10**LOG_FLOOR share the
# lowest, a score of 1 (or above) is in the highest, [10**(-1/LOG_STEPS), 1].
_LOG_BIN = f"least(toInt32(floor(log10(greatest(score, {10.0**LOG_FLOOR!r})) * {LOG_STEPS})), -1)"


def _log_counts(
    rows: Rows, db: str, window: dict[str, Any], model: str | None = None
) -> dict[str, dict[int, int]]:
    """Each model's score counts by fine log10 bin (``model`` alone when given)."""
    only = "and model_version = {v:String} " if model is not None else ""
    found = rows(
        f"select toString(model_version) as model_version, {_LOG_BIN} as bin, count() as n "  # noqa: S608 - checked identifier, constant expressions
        f"from {db}.predictions final where not isNaN(score) {only}and {_WINDOW} "
        "group by model_version, bin",
        {**window, **({"v": model} if model is not None else {})},
    )
    out: dict[str, dict[int, int]] = {}
    for row in found:
        per = out.setdefault(str(row["model_version"]), {})
        per[int(row["bin"])] = per.get(int(row["bin"]), 0) + int(row["n"])
    return out


def _score_distribution(
    rows: Rows,
    db: str,
    models_dir: Path,
    champion: str,
    window: dict[str, Any],
    min_rows: int,
) -> ScoreDistribution:
    cards = rows(
        f"select card_path from {db}.models final where model_version = {{v:String}}",  # noqa: S608 - checked identifier
        {"v": champion},
    )
    found = load_baseline(models_dir, champion, str(cards[0]["card_path"]) if cards else None)
    if found is None:
        edges, merged = log_bins({champion: {}, **_log_counts(rows, db, window, champion)})
        counts = list(merged[champion])
        baseline, source = None, ""
    else:
        edges, baseline, source = found
        binned = rows(
            "select arrayCount(e -> e <= score, {edges:Array(Float64)}) as bin, count() as n "  # noqa: S608 - checked identifier
            f"from {db}.predictions final where model_version = {{v:String}} "
            f"and not isNaN(score) and {_WINDOW} group by bin",
            {**window, "edges": list(edges), "v": champion},
        )
        counts = [0] * (len(edges) + 1)
        for row in binned:
            counts[int(row["bin"])] += int(row["n"])
    events = sum(counts)
    return ScoreDistribution(
        model_version=champion,
        edges=edges,
        live=proportions(counts),
        baseline=baseline,
        events=events,
        # The drift code's PSI (streams.monitoring.drift.psi, as drift_stats computes it),
        # on the same bins: the champion's score baseline, a value in the bin of the
        # edges at or below it. Under min_rows it would be sampling noise.
        psi=psi(counts, baseline) if baseline is not None and events >= min_rows else None,
        baseline_source=source,
        log_scale=baseline is None,
    )


def _decisions(
    rows: Rows, db: str, window: dict[str, Any], start: datetime, end: datetime
) -> HourlyDecisions:
    found = rows(
        "select formatDateTime(toStartOfHour(scored_at), '%Y-%m-%d %H:00', 'UTC') as hour, "  # noqa: S608 - checked identifier
        "toString(decision) as decision, count() as n "
        f"from {db}.predictions final where decided and {_WINDOW} "
        "group by hour, decision order by hour",
        window,
    )
    hours = hours_between(start, end)
    index = {h: i for i, h in enumerate(hours)}
    counts = {d: [0] * len(hours) for d in DECISIONS}
    for row in found:
        i = index.get(str(row["hour"]))
        if i is not None and str(row["decision"]) in counts:
            counts[str(row["decision"])][i] += int(row["n"])
    return HourlyDecisions(tuple(hours), {d: tuple(c) for d, c in counts.items()})


_MS = "toFloat64(toUnixTimestamp64Milli({b}) - toUnixTimestamp64Milli({a}))"
_LATENCIES = (
    (
        "end_to_end",
        "raw record produced → row queryable",
        _MS.format(a="produced_at", b="inserted_at"),
    ),
    ("ingest", "produced → validated and handed off", _MS.format(a="produced_at", b="ingested_at")),
    ("queue", "handed off → picked up by the scorer", "queue_ms"),
    ("features", "feature lookup (per batch)", "feature_ms"),
    ("model", "every model scored (per batch)", "model_ms"),
    ("sink", "scored → row queryable in ClickHouse", _MS.format(a="scored_at", b="inserted_at")),
)


def _latency(rows: Rows, db: str, window: dict[str, Any]) -> tuple[LatencyRow, ...]:
    levels = ", ".join(str(p) for p in PERCENTILES)
    columns = ", ".join(f"quantiles({levels})({expr}) as {name}" for name, _, expr in _LATENCIES)
    found = rows(
        f"select {columns}, count() as n from {db}.predictions final where decided and {_WINDOW}",  # noqa: S608 - checked identifier, constant expressions
        window,
    )
    if not found or not int(found[0]["n"]):
        return ()
    out = []
    for name, what, _ in _LATENCIES:
        q = [float(v) for v in found[0][name]]
        out.append(LatencyRow(name, what, q[0], q[1], q[2]))
    return tuple(out)


def _latency_hourly(
    rows: Rows, db: str, window: dict[str, Any], start: datetime, end: datetime
) -> HourlyLatency:
    expr = _LATENCIES[0][2]
    found = rows(
        "select formatDateTime(toStartOfHour(scored_at), '%Y-%m-%d %H:00', 'UTC') as hour, "  # noqa: S608 - checked identifier
        f"quantiles(0.5, 0.99)({expr}) as q from {db}.predictions final "
        f"where decided and {_WINDOW} group by hour order by hour",
        window,
    )
    hours = hours_between(start, end)
    by_hour = {str(r["hour"]): [float(v) for v in r["q"]] for r in found}
    return HourlyLatency(
        tuple(hours),
        tuple(by_hour[h][0] if h in by_hour else None for h in hours),
        tuple(by_hour[h][1] if h in by_hour else None for h in hours),
    )


def _comparisons(rows: Rows, db: str, window: dict[str, Any]) -> tuple[Comparison, ...]:
    pairs = rows(
        "with champion as ("  # noqa: S608 - checked identifier
        "select topic, partition, offset, toString(model_version) as version, "
        f"toString(decision) as decision from {db}.predictions final "
        f"where model_role = 'champion' and {_WINDOW}), "
        "challenger as ("
        "select topic, partition, offset, toString(model_version) as version, "
        "toString(model_role) as role, toString(decision) as decision "
        f"from {db}.predictions final where model_role != 'champion' and {_WINDOW}) "
        "select champion.version as champion, challenger.version as challenger, "
        "challenger.role as role, champion.decision as champion_decision, "
        "challenger.decision as challenger_decision, count() as n "
        "from challenger inner join champion on challenger.topic = champion.topic "
        "and challenger.partition = champion.partition and challenger.offset = champion.offset "
        "group by champion, challenger, role, champion_decision, challenger_decision",
        window,
    )
    if not pairs:
        return ()
    fine = _log_counts(rows, db, window)
    grouped: dict[tuple[str, str, str], dict[tuple[str, str], int]] = {}
    for row in pairs:
        key = (str(row["champion"]), str(row["challenger"]), str(row["role"]))
        cell = (str(row["champion_decision"]), str(row["challenger_decision"]))
        grouped.setdefault(key, {})[cell] = int(row["n"])
    out = []
    for (champion, challenger, role), confusion in sorted(grouped.items()):
        events = sum(confusion.values())
        agree = sum(n for (a, b), n in confusion.items() if a == b)
        # Bins fitted to this pair's scores, the same for both histograms.
        edges, hists = log_bins({m: fine.get(m, {}) for m in (champion, challenger)})
        out.append(
            Comparison(
                champion=champion,
                challenger=challenger,
                role=role,
                events=events,
                agreement=agree / events if events else 0.0,
                confusion=confusion,
                edges=edges,
                champion_hist=proportions(hists[champion]),
                challenger_hist=proportions(hists[challenger]),
            )
        )
    return tuple(out)


def _drift(
    rows: Rows,
    database: str,
    window: dict[str, Any],
    champion: str | None,
    min_rows: int,
) -> tuple[DriftSeries, ...]:
    db = quote_identifier(database)
    # Since migration 0008 ``alert`` is either rule (PSI or missing share) and
    # ``psi_alert`` the PSI rule alone: a PSI chart marks the PSI rule's alerts.
    alert = "psi_alert" if "psi_alert" in column_names(rows, database, "drift_stats") else "alert"
    found = rows(
        "select toInt64(toUnixTimestamp(window_start)) as window_s, "  # noqa: S608 - checked identifier
        "toUInt32(window_seconds) as window_seconds, "
        "toString(model_version) as model_version, toString(feature) as feature, "
        f"toFloat64(psi) as psi, toUInt64(rows) as rows, toUInt8({alert}) as alert "
        f"from {db}.drift_stats "
        "where toUnixTimestamp(window_start) * 1000 >= {start_ms:Int64} "
        "and toUnixTimestamp(window_start) * 1000 < {end_ms:Int64} "
        "order by window_start",
        window,
    )
    starts = sorted({int(r["window_s"]) for r in found})
    index = {w: i for i, w in enumerate(starts)}
    windows = tuple(datetime.fromtimestamp(w, UTC) for w in starts)
    cells: dict[tuple[str, str], dict[int, tuple[float, int, bool]]] = {}
    seconds: dict[tuple[str, str], int] = {}
    for r in found:
        key = (str(r["model_version"]), str(r["feature"]))
        cells.setdefault(key, {})[index[int(r["window_s"])]] = (
            float(r["psi"]),
            int(r["rows"]),
            bool(r["alert"]),
        )
        seconds[key] = max(seconds.get(key, 0), int(r["window_seconds"]))
    series = []
    for key, values in cells.items():
        cell = [values.get(i, (math.nan, 0, False)) for i in range(len(windows))]
        series.append(
            DriftSeries(
                model_version=key[0],
                feature=key[1],
                windows=windows,
                window_seconds=seconds[key],
                psi=tuple(c[0] for c in cell),
                rows=tuple(c[1] for c in cell),
                alerts=tuple(c[2] for c in cell),
                min_rows=min_rows,
            )
        )
    # The champion's features first; within a model the most drifted first (on measured
    # windows: a 2-event window's PSI of 9 does not make a column the most drifted).
    series.sort(key=lambda s: (s.model_version != champion, -s.peak))
    return tuple(series[:TOP_FEATURES])
