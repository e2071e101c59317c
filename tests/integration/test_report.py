"""The analyst report on a real chDB: synthetic predictions → queries → HTML → headless Chromium.

No broker: a fresh chDB database per session, filled with a few hundred predictions of
a champion and a shadow, a dead letter and a training baseline sidecar. The page is
rendered twice: without ``drift_stats`` (the section says so) and with one.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from streams.clickhouse import apply_migrations, connect, load_migrations
from streams.clickhouse.gateway import ClickHouseGateway
from streams.report import collect, render_html
from streams.report.source import readonly_rows
from streams.settings import Settings
from streams.sql import ReadOnlySQL

pytestmark = pytest.mark.integration

CHAMPION, SHADOW = "fraud_lightgbm-1", "fraud_logreg-2"
EVENTS = 300
CHROMIUM = next(
    (c for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None
)


def _decision(score: float) -> str:
    return "decline" if score >= 0.8 else "review" if score >= 0.5 else "approve"


@pytest.fixture(scope="module")
def filled(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ClickHouseGateway, ClickHouseGateway, Settings]]:
    root = tmp_path_factory.mktemp("report")
    settings = Settings(
        home=root,
        clickhouse_dsn=f"chdb://{root / 'chdb'}",
        clickhouse_database=f"it_{uuid.uuid4().hex[:8]}",
        models_dir=root / "models",
    )
    client = connect(settings)
    # The tables the report reads, without any drift migration: drift_stats is absent.
    apply_migrations(
        client, settings.clickhouse_database, [m for m in load_migrations() if m.version <= 3]
    )
    writer = ClickHouseGateway(client, settings.clickhouse_database)
    rng = np.random.default_rng(7)
    now = datetime.now(UTC)
    rows = []
    for i in range(EVENTS):
        scored = now - timedelta(minutes=float(rng.uniform(1, 6 * 60)))
        produced = scored - timedelta(milliseconds=float(rng.gamma(2.0, 40.0)))
        ingested = produced + timedelta(milliseconds=float(rng.gamma(2.0, 3.0)))
        inserted = scored + timedelta(milliseconds=float(rng.gamma(2.0, 10.0)))
        champion = float(rng.beta(1.2, 6.0))
        shadow = float(np.clip(champion + rng.normal(0.03, 0.08), 0, 1))
        for version, role, score, decided in (
            (CHAMPION, "champion", champion, True),
            (SHADOW, "shadow", shadow, False),
        ):
            rows.append(
                [
                    f"evt-{i}", produced, version.split("-")[0], version, role, decided, score,
                    _decision(score), 0.5 <= score < 0.6, float(rng.gamma(2, 2)),
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
    # The champion's training baseline: a sidecar with a score histogram.
    artifacts = settings.models_dir / "artifacts"
    artifacts.mkdir(parents=True)
    edges = [0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.65, 0.8]
    expected = [0.16, 0.2, 0.17, 0.13, 0.14, 0.08, 0.05, 0.04, 0.02, 0.01]
    sidecar = {
        "format_version": 1, "name": "fraud_lightgbm", "version": "1", "kind": "lightgbm",
        "feature_service": "fraud_v1", "input": "features", "output": "score", "features": [],
        "thresholds": {"review": 0.5, "decline": 0.8, "low_confidence_low": 0.5,
                       "low_confidence_high": 0.6},
        "onnx_sha256": "0" * 64,
        "baselines": {"score": {"edges": edges, "proportions": expected}, "features": {}},
    }  # fmt: skip
    (artifacts / f"{CHAMPION}.json").write_text(json.dumps(sidecar))
    # The report reads as the worker's /sql does: a read-only session of its own.
    yield writer, ReadOnlySQL(settings), settings
    writer.close()


def _render(reader: ReadOnlySQL, settings: Settings, out: Path) -> str:
    end = datetime.now(UTC)
    data = collect(
        readonly_rows(reader),
        settings.clickhouse_database,
        settings.models_dir,
        end - timedelta(hours=24),
        end,
    )
    page = render_html(data)
    out.write_text(page, encoding="utf-8")
    assert data.events == EVENTS
    assert data.champion == CHAMPION
    assert data.scores is not None and data.scores.baseline is not None
    assert data.scores.psi is not None and data.scores.psi >= 0
    assert data.dead_letters == 1
    assert [c.challenger for c in data.comparisons] == [SHADOW]
    assert sum(data.comparisons[0].confusion.values()) == EVENTS
    assert {row.name for row in data.latency} >= {"end_to_end", "model", "sink"}
    assert sum(sum(c) for c in data.decisions.counts.values()) == EVENTS
    return page


Filled = tuple[ClickHouseGateway, ClickHouseGateway, Settings]


def test_report_without_drift_stats(filled: Filled, tmp_path: Path) -> None:
    _, reader, settings = filled
    page = _render(reader, settings, tmp_path / "report.html")
    assert "No drift statistics yet" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page and "<script" not in page


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


def test_report_renders_in_chromium(filled: Filled, tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium): cannot screenshot")
    writer, reader, settings = filled
    writer.command(
        f"create table {writer.table('drift_stats')} (window_start DateTime, "
        "model_version String, feature String, psi Float64, alert UInt8) "
        "engine = MergeTree order by window_start"
    )
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=6)
    drift = [
        [start + timedelta(minutes=30 * w), CHAMPION, feature, psi, int(psi > 0.25)]
        for w in range(12)
        for feature, psi in (
            ("amount_zscore", 0.02 + 0.03 * w),
            ("merchant_txn_7d", 0.05 + 0.01 * (w % 3)),
            ("__score__", 0.04 + 0.005 * w),
        )
    ]
    writer.insert_columns(
        "drift_stats",
        list(zip(*drift, strict=True)),
        ["window_start", "model_version", "feature", "psi", "alert"],
    )
    page_path = tmp_path / "report.html"
    page = _render(reader, settings, page_path)
    assert "PSI of amount_zscore" in page and "No drift statistics yet" not in page
    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--screenshot={shot}", "--window-size=1280,2000", page_path.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert shot.exists() and shot.stat().st_size > 20_000
    width, height, pixels = _png_size(shot)
    assert (width, height) == (1280, 2000)
    # Not one colour: the decompressed scanlines hold many distinct byte values.
    assert len(set(pixels[:1_000_000])) > 50
