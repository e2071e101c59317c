"""The analyst report on a real chDB: synthetic predictions → queries → HTML → headless Chromium.

No broker: a fresh chDB database per session, filled with a few hundred predictions of
a champion and a shadow with a fraud model's scores (about 1e-6…1e-2), a dead letter and a
training baseline sidecar (the training code's own quantile histogram). The page is
rendered without ``drift_stats`` (the section says so) and, in a second database with every
migration, with drift windows written as the worker writes them: most of a few hundred
events, three of 1-3 events whose PSI is near 10.

The browser test reads the page back as Chromium laid it out (a copy of the page with a
measuring script, dumped with ``--dump-dom``; the report itself has no script) and checks
what an analyst saw going wrong: PSI plotted from windows of a handful of events, every
score in the first bin of a 0-1 axis, axis labels like ``4e-07``, a window printed without
its date, the champion's id broken mid-word. It also writes a screenshot (``report.png``
next to the page) for a person to look at.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from models.evaluate import histogram
from streams.cli.report import report
from streams.clickhouse import apply_migrations, connect, load_migrations
from streams.clickhouse.gateway import ClickHouseGateway
from streams.monitoring.drift import ALERT_MIN_ROWS, SCORE, Baseline, HistogramRow, window_table
from streams.report import collect, render_html
from streams.report.source import readonly_rows
from streams.settings import Settings
from streams.sql import ReadOnlySQL

pytestmark = pytest.mark.integration

CHAMPION, SHADOW = "fraud_lightgbm-12", "fraud_logreg-3"
EVENTS = 300
CHROMIUM = next(
    (c for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None
)
WINDOW = timedelta(minutes=30)
WINDOW_MS = int(WINDOW.total_seconds() * 1000)
DRIFT_WINDOWS = 12
THIN = {3: 1, 7: 2, 10: 3}  # window index → events: under ALERT_MIN_ROWS, PSI near 10
FEATURES = ("amount_zscore", "merchant_txn_7d", SCORE)
SCIENTIFIC = re.compile(r"\d(?:\.\d+)?[eE][-+]?\d")
DATE_TIME = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}"


def _decision(score: float) -> str:
    return "decline" if score >= 0.5 else "review" if score >= 0.02 else "approve"


def _fraud_scores(rng: np.random.Generator, n: int) -> np.ndarray:
    """A fraud model's scores: almost all around 1e-6…1e-2, a few frauds near 1."""
    scores = 10 ** rng.normal(-4.5, 1.0, n)
    frauds = rng.random(n) < 0.02
    scores[frauds] = rng.beta(5, 2, int(frauds.sum()))
    return np.clip(scores, 1e-8, 0.999)


@dataclass(frozen=True)
class Filled:
    plain: Settings  # migrations 1-3: no drift_stats
    drifted: Settings  # every migration, drift windows written
    reader: ReadOnlySQL  # the plain database, read as the worker's /sql does
    drift_start: datetime


def _fill(writer: ClickHouseGateway, rng: np.random.Generator, now: datetime) -> None:
    rows = []
    champion_scores = _fraud_scores(rng, EVENTS)
    for i in range(EVENTS):
        scored = now - timedelta(minutes=float(rng.uniform(1, 6 * 60)))
        produced = scored - timedelta(milliseconds=float(rng.gamma(2.0, 40.0)))
        ingested = produced + timedelta(milliseconds=float(rng.gamma(2.0, 3.0)))
        inserted = scored + timedelta(milliseconds=float(rng.gamma(2.0, 10.0)))
        champion = float(champion_scores[i])
        shadow = float(np.clip(champion * 10 ** rng.normal(0.2, 0.3), 1e-8, 0.999))
        for version, role, score, decided in (
            (CHAMPION, "champion", champion, True),
            (SHADOW, "shadow", shadow, False),
        ):
            rows.append(
                [
                    f"evt-{i}", produced, version.split("-")[0], version, role, decided, score,
                    _decision(score), 0.02 <= score < 0.05, float(rng.gamma(2, 2)),
                    float(rng.gamma(2, 1)), float(rng.gamma(2, 0.5)), produced, ingested,
                    scored, inserted, "streamscore.raw.transaction", i % 3, i, "live",
                ]
            )  # fmt: skip
    columns = [
        "event_id", "event_time", "model_name", "model_version", "model_role", "decided",
        "score", "decision", "human_review", "queue_ms", "feature_ms", "model_ms",
        "produced_at", "ingested_at", "scored_at", "inserted_at", "topic", "partition",
        "offset", "run",
    ]  # fmt: skip
    writer.insert_columns("predictions", list(zip(*rows, strict=True)), columns)
    writer.insert_columns(
        "dlq_events",
        [["streamscore.raw.transaction"], [0], [10_000], [now], [now], ["ingest"],
         ["schema"], ["bad"], [now]],
        ["topic", "partition", "offset", "produced_at", "dead_at", "stage", "reason",
         "message", "sunk_at"],
    )  # fmt: skip


def _fill_drift(writer: ClickHouseGateway, rng: np.random.Generator, start: datetime) -> None:
    """Baselines and whole closed windows, as the worker writes them; drift_stats (the
    view) computes PSI and alerts."""
    expected = np.array([0.01, 0.04, 0.1, 0.15, 0.2, 0.2, 0.15, 0.1, 0.04, 0.01])
    baselines = [
        Baseline(name, i, np.arange(1.0, 10.0), expected, 0.2, 50_000)
        for i, name in enumerate(FEATURES)
    ]
    writer.insert_columns(
        "drift_baselines",
        list(zip(*[
            [CHAMPION, b.name, b.column if b.name != SCORE else -1, b.edges.tolist(),
             b.expected.tolist(), b.threshold, b.reference_rows, b.critical]
            for b in baselines
        ], strict=True)),
        ["model_version", "feature", "feature_index", "edges", "expected", "threshold",
         "reference_rows", "critical"],
    )  # fmt: skip
    windows = []
    for w in range(DRIFT_WINDOWS):
        for k, name in enumerate(FEATURES):
            if w in THIN:
                # A handful of events, all in the rarest bin: PSI ≈ 9, by chance alone.
                counts = [0] * 9 + [THIN[w]]
            else:
                # amount_zscore drifts a little more each window (alerts from about w = 5).
                shift = 0.09 * w if name == "amount_zscore" else 0.0
                p = np.roll(expected, 1) * shift + expected * (1 - shift)
                counts = rng.multinomial(int(rng.integers(300, 600)), p / p.sum()).tolist()
            windows.append(
                HistogramRow(
                    CHAMPION, name, k if name != SCORE else -1,
                    int((start + WINDOW * w).timestamp() * 1000), WINDOW_MS, 0, sum(counts), 0,
                    counts,
                )
            )  # fmt: skip
    writer.insert_arrow("drift_deltas", window_table(windows, "it-worker"))


def _sidecar(settings: Settings, rng: np.random.Generator) -> None:
    """The champion's training baseline: quantile bins of holdout scores, as training
    writes them (edges near 1e-6…1e-3)."""
    baseline = histogram(_fraud_scores(rng, 20_000))
    artifacts = settings.models_dir / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    sidecar = {
        "format_version": 1, "name": "fraud_lightgbm", "version": "12", "kind": "lightgbm",
        "feature_service": "fraud_v1", "input": "features", "output": "score", "features": [],
        "thresholds": {"review": 0.02, "decline": 0.5, "low_confidence_low": 0.02,
                       "low_confidence_high": 0.05},
        "onnx_sha256": "0" * 64,
        "baselines": {"score": baseline.to_dict(), "features": {}},
    }  # fmt: skip
    (artifacts / f"{CHAMPION}.json").write_text(json.dumps(sidecar))


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filled]:
    # One chDB path for the module (chDB hosts one per process), two databases on it.
    root = tmp_path_factory.mktemp("report")
    plain = Settings(
        home=root,
        clickhouse_dsn=f"chdb://{root / 'chdb'}",
        clickhouse_database=f"it_{uuid.uuid4().hex[:8]}",
        models_dir=root / "models",
    )
    drifted = Settings(
        home=root,
        clickhouse_dsn=plain.clickhouse_dsn,
        clickhouse_database=f"it_{uuid.uuid4().hex[:8]}",
        models_dir=root / "models",
    )
    connect(drifted).close()  # creates its database
    client = connect(plain)
    migrations = load_migrations()
    apply_migrations(client, plain.clickhouse_database, [m for m in migrations if m.version <= 3])
    apply_migrations(client, drifted.clickhouse_database, migrations)
    now = datetime.now(UTC)
    drift_start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=7)
    writers = [ClickHouseGateway(client, s.clickhouse_database) for s in (plain, drifted)]
    for writer in writers:
        # The same seed: both databases hold the same predictions.
        _fill(writer, np.random.default_rng(7), now)
    _fill_drift(writers[1], np.random.default_rng(8), drift_start)
    _sidecar(plain, np.random.default_rng(9))
    yield Filled(plain, drifted, ReadOnlySQL(plain), drift_start)
    client.close()


def _check_data(settings: Settings, reader: ReadOnlySQL) -> None:
    end = datetime.now(UTC)
    data = collect(
        readonly_rows(reader),
        settings.clickhouse_database,
        settings.models_dir,
        end - timedelta(hours=24),
        end,
    )
    assert data.events == EVENTS
    assert data.champion == CHAMPION
    assert data.scores is not None and data.scores.baseline is not None
    assert data.scores.psi is not None and data.scores.psi >= 0
    assert data.dead_letters == 1
    assert [c.challenger for c in data.comparisons] == [SHADOW]
    assert sum(data.comparisons[0].confusion.values()) == EVENTS
    assert {row.name for row in data.latency} >= {"end_to_end", "model", "sink"}
    assert sum(sum(c) for c in data.decisions.counts.values()) == EVENTS
    page = render_html(data)
    assert "No drift statistics yet" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page and "<script" not in page


def test_report_without_drift_stats(filled: Filled) -> None:
    _check_data(filled.plain, filled.reader)


def _png_size(path: Path) -> tuple[int, int, bytes]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    idat = b"".join(
        data[i + 8 : i + 8 + struct.unpack(">I", data[i : i + 4])[0]]
        for i in _chunks(data)
        if data[i + 4 : i + 8] == b"IDAT"
    )
    return width, height, zlib.decompress(idat)


def _chunks(data: bytes) -> Iterator[int]:
    i = 8
    while i < len(data):
        yield i
        i += 12 + struct.unpack(">I", data[i : i + 4])[0]


# Runs in a copy of the page only: geometry and text as Chromium laid them out, as JSON in
# a <pre id="measured"> that --dump-dom prints. Selectors lean on plain SVG (a rect with a
# tooltip is a bar, a circle of r 2.5 or a polyline vertex is a plotted value) where they can.
MEASURE = """
<script>
(() => {
  const box = (e) => { const r = e.getBoundingClientRect();
    return {x: r.x, y: r.y, w: r.width, h: r.height}; };
  const tip = (e) => { const t = e.querySelector('title'); return t ? t.textContent : ''; };
  const lineHeight = (e) => { const s = getComputedStyle(e);
    return s.lineHeight === 'normal' ? parseFloat(s.fontSize) * 1.2 : parseFloat(s.lineHeight); };
  const kpi = [...document.querySelectorAll('.kpi')]
    .find((k) => k.querySelector('span').textContent.trim() === 'champion').querySelector('b');
  const charts = [...document.querySelectorAll('svg')].map((svg) => {
    const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
    const left = svg.getBoundingClientRect().x;
    const xs = new Set();
    svg.querySelectorAll('polyline').forEach((p) => {
      if (p.getAttribute('fill') !== 'none' || p.getAttribute('stroke') === '#374151') return;
      p.getAttribute('points').trim().split(/\\s+/)
        .forEach((pt) => xs.add(Math.round(left + parseFloat(pt.split(',')[0]) * scale)));
    });
    const points = [...svg.querySelectorAll('circle')]
      .filter((c) => c.getAttribute('r') === '2.5')
      .map((c) => { const x = left + parseFloat(c.getAttribute('cx')) * scale;
        xs.add(Math.round(x)); return {x, tip: tip(c)}; });
    return {
      title: svg.getAttribute('aria-label'),
      box: box(svg),
      texts: [...svg.querySelectorAll('text')].map((t) => t.textContent),
      xLabels: [...svg.querySelectorAll('text.x-label')]
        .map((t) => ({text: t.textContent, ...box(t)})),
      yTop: Math.max(...[...svg.querySelectorAll('text[text-anchor=end]')]
        .map((t) => parseFloat(t.textContent)).filter((v) => !isNaN(v))),
      bars: [...svg.querySelectorAll('rect')].filter((r) => r.querySelector('title'))
        .map((r) => ({fill: r.getAttribute('fill'), h: box(r).h})),
      plottedXs: [...xs],
      points,
      alerts: [...svg.querySelectorAll('circle')].filter((c) => c.getAttribute('r') === '4')
        .map((c) => Math.round(left + parseFloat(c.getAttribute('cx')) * scale)),
      gaps: [...svg.querySelectorAll('rect.gap')].map((r) => ({...box(r), tip: tip(r)})),
    };
  });
  const out = {
    champion: {text: kpi.textContent, h: box(kpi).h, line: lineHeight(kpi),
               scrollWidth: kpi.scrollWidth, clientWidth: kpi.clientWidth},
    ids: [...document.querySelectorAll('.id')].map((e) => ({
      text: e.textContent, lines: e.getClientRects().length, h: box(e).h, line: lineHeight(e),
      scrollWidth: e.scrollWidth, clientWidth: e.clientWidth})),
    sub: document.querySelector('p.sub').textContent,
    charts,
  };
  const pre = document.createElement('pre');
  pre.id = 'measured';
  pre.textContent = JSON.stringify(out);
  document.body.append(pre);
})();
</script>
"""

SIZE = (1280, 4000)


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--window-size={SIZE[0]},{SIZE[1]}", *args],
        check=True, capture_output=True, timeout=120, text=True,
    )  # fmt: skip


def _measure(page: Path) -> dict[str, Any]:
    probe = page.with_name("measure.html")
    probe.write_text(
        page.read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"), encoding="utf-8"
    )
    dom = _chromium("--dump-dom", probe.as_uri()).stdout
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)
    assert found, "the measuring script did not run"
    return dict(json.loads(html.unescape(found.group(1))))


def _chart(measured: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    return [c for c in measured["charts"] if str(c["title"]).startswith(prefix)]


@dataclass(frozen=True)
class Rendered:
    """The report as ``streamscore report`` wrote it and Chromium laid it out."""

    output: str  # what the command printed
    page: str
    screenshot: Path
    measured: dict[str, Any]
    drift_start: datetime


@pytest.fixture(scope="module")
def rendered(filled: Filled, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium): cannot screenshot")
    out = tmp_path_factory.mktemp("rendered")
    page_path = out / "report.html"
    # Through the command an analyst runs (the direct read-only path: no worker holds chDB).
    result = CliRunner().invoke(
        report,
        ["--since", "24h", "--out", str(page_path)],
        obj=filled.drifted,  # its models_dir (and the sidecar) is plain's
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    shot = out / "report.png"
    _chromium(f"--screenshot={shot}", page_path.as_uri())
    measured = _measure(page_path)
    (out / "measured.json").write_text(json.dumps(measured, indent=1))
    return Rendered(
        result.output, page_path.read_text(encoding="utf-8"), shot, measured, filled.drift_start
    )


def test_the_page_renders_with_drift(rendered: Rendered) -> None:
    assert "PSI of amount_zscore" in rendered.page
    assert "No drift statistics yet" not in rendered.page
    assert "<script" not in rendered.page
    shot = rendered.screenshot
    assert shot.exists() and shot.stat().st_size > 20_000
    width, height, pixels = _png_size(shot)
    assert (width, height) == SIZE
    assert len(set(pixels[:1_000_000])) > 50  # not one colour


def test_psi_is_plotted_only_for_windows_with_enough_events(rendered: Rendered) -> None:
    """Windows under ALERT_MIN_ROWS are grey gaps counted in the legend, their events in
    the tooltip; every plotted point is a window of enough events, and the axis is not
    stretched by the PSI of 1-3 events."""
    drift = _chart(rendered.measured, "PSI of")
    assert len(drift) == len(FEATURES)
    measured_starts = {
        f"{rendered.drift_start + WINDOW * w:%Y-%m-%d %H:%M}"
        for w in range(DRIFT_WINDOWS)
        if w not in THIN
    }
    for chart in drift:
        assert len(chart["plottedXs"]) == DRIFT_WINDOWS - len(THIN), chart["title"]
        # The thin windows' PSI is ~11.7 (an axis to 12.5); the drifting column stays under 1.
        assert chart["yTop"] < 3, f"{chart['title']}: axis stretched to {chart['yTop']}"
        assert len(chart["gaps"]) == len(THIN), chart["title"]
        legend = f"{len(THIN)} windows with < {ALERT_MIN_ROWS} events"
        assert legend in chart["texts"], chart["texts"]
        for x in chart["plottedXs"]:
            assert not any(g["x"] <= x <= g["x"] + g["w"] for g in chart["gaps"]), chart["title"]
        starts = set()
        for point in chart["points"]:
            span = re.match(
                rf"({DATE_TIME}) – {DATE_TIME} UTC: PSI [\d.]+ over ([\d,]+)", point["tip"]
            )
            assert span, point["tip"]
            assert int(span.group(2).replace(",", "")) >= ALERT_MIN_ROWS
            starts.add(span.group(1))
        assert starts == measured_starts, chart["title"]
        for gap in chart["gaps"]:
            assert re.match(rf"{DATE_TIME} – {DATE_TIME} UTC: [123] events, too few", gap["tip"])
        assert set(chart["alerts"]) <= set(chart["plottedXs"]), chart["title"]
    # The drifting column is the most drifted, and alerts; the others do not.
    assert drift[0]["title"].startswith("PSI of amount_zscore") and drift[0]["alerts"]
    assert not drift[1]["alerts"] and not drift[2]["alerts"]


def test_score_axes_are_readable_and_tiny_scores_spread(rendered: Rendered) -> None:
    """Scores around 1e-6…1e-2: no label in scientific notation, labels in percent that do
    not overlap, and no bin of either chart holds half the events."""
    measured = rendered.measured
    score_charts = _chart(measured, "Score distribution") + _chart(measured, "Scores:")
    assert len(score_charts) == 2
    for chart in score_charts:
        assert not [t for t in chart["texts"] if SCIENTIFIC.search(t)], chart["texts"]
        labels = chart["xLabels"]
        assert len(labels) >= 3, chart["title"]
        assert all(re.fullmatch(r"\d+(\.\d+)?%", label["text"]) for label in labels), labels
        for a, b in pairwise(labels):
            assert a["x"] + a["w"] <= b["x"], f"{a['text']} overlaps {b['text']}"
        outside = chart["box"]["x"] + chart["box"]["w"]
        assert all(chart["box"]["x"] <= x["x"] and x["x"] + x["w"] <= outside for x in labels)
        by_series: dict[str, list[float]] = {}
        for bar in chart["bars"]:
            by_series.setdefault(bar["fill"], []).append(bar["h"])
        assert by_series, chart["title"]
        for fill, heights in by_series.items():
            # Bar heights are proportional to shares.
            assert len(heights) >= 4 and max(heights) < 0.5 * sum(heights), (fill, heights)


def test_windows_carry_full_dates(rendered: Rendered) -> None:
    """The command's line, the header, the first hour of the hourly charts and every
    drift window label say the date, not only the time."""
    said = re.search(rf"{DATE_TIME} – {DATE_TIME} UTC", rendered.output)
    assert said, rendered.output
    measured = rendered.measured
    # Start, end and when it was generated.
    assert len(re.findall(DATE_TIME, measured["sub"])) == 3, measured["sub"]
    hourly = _chart(measured, "Decisions per hour") + _chart(measured, "End-to-end latency")
    assert len(hourly) == 2
    for chart in hourly:
        assert re.fullmatch(DATE_TIME, chart["xLabels"][0]["text"]), chart["xLabels"][:2]
    for chart in _chart(measured, "PSI of"):
        assert chart["xLabels"]
        assert all(re.fullmatch(DATE_TIME, label["text"]) for label in chart["xLabels"])


def test_identifiers_stay_on_one_line(rendered: Rendered) -> None:
    """The champion's id on one line and whole; no model id broken across lines."""
    champion = rendered.measured["champion"]
    assert champion["text"].strip() == CHAMPION
    assert champion["h"] <= champion["line"] * 1.2, champion
    assert champion["scrollWidth"] <= champion["clientWidth"], champion
    ids = rendered.measured["ids"]
    assert {CHAMPION, SHADOW} <= {i["text"].strip() for i in ids}
    for element in ids:
        assert element["lines"] == 1 and element["h"] <= element["line"] * 1.2, element
