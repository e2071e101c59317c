"""``streamscore bench features``: serving-side feature lookup against Feast, plus nightly cost.

Builds a simulated lake in a temporary home, runs the nightly pipeline once, then times
batch lookups of 1,000 transactions through ``OnlineFeatures`` and through Feast's
``get_online_features`` on the same ids. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import click
import numpy as np


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    return (
        statistics.median(ordered) * 1e3,
        ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] * 1e3,
    )


@click.command("features")
@click.option("--accounts", default=2_000, show_default=True, help="Simulated accounts.")
@click.option("--days", default=100, show_default=True, help="Simulated days of history.")
@click.option("--batch", default=1_000, show_default=True, help="Rows per lookup batch.")
@click.option("--batches", default=200, show_default=True, help="Batches through OnlineFeatures.")
@click.option("--feast-batches", default=10, show_default=True, help="Batches through Feast.")
@click.option("--unknown", default=0.05, show_default=True, help="Share of ids never seen.")
def features(
    accounts: int, days: int, batch: int, batches: int, feast_batches: int, unknown: float
) -> None:
    """Batch feature lookup: OnlineFeatures against Feast get_online_features."""
    import pyarrow.parquet as pq

    from streams.features.online import OnlineFeatures
    from streams.features.paths import export_path
    from streams.features.store import feature_store
    from streams.nightly import run_nightly
    from streams.settings import Settings
    from streams.simulate.history import write_history

    with tempfile.TemporaryDirectory(prefix="streamscore-bench-") as scratch:
        root = Path(scratch)
        end = date(2024, 6, 1)
        began = time.perf_counter()
        report = write_history(str(root / "lake"), end, days=days, accounts=accounts)
        click.echo(f"lake: {report.rows} in {time.perf_counter() - began:.1f}s")
        settings = Settings(
            home=root / "home",
            lake_dir=str(root / "lake"),
            clickhouse_dsn=f"chdb://{root / 'chdb'}",
        )
        nightly_date = end - timedelta(days=1)
        began = time.perf_counter()
        run = run_nightly(settings, nightly_date)
        elapsed = time.perf_counter() - began
        peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_dbt = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        click.echo(
            f"nightly {nightly_date}: {elapsed:.1f}s {run.durations_s} rows {run.rows}; "
            f"peak RSS {peak_self:.0f} MiB (this process), {peak_dbt:.0f} MiB (dbt)"
        )

        online = OnlineFeatures(settings, latest_run=lambda: run)
        began = time.perf_counter()
        online.refresh_if_newer()
        click.echo(f"OnlineFeatures load: {(time.perf_counter() - began) * 1e3:.0f} ms")
        rng = np.random.default_rng(1)
        ids: dict[str, np.ndarray] = {}
        for view in online.layout.views:
            known = pq.read_table(export_path(settings, view.model, nightly_date)).column(
                view.join_key
            )
            pool = np.asarray(known.to_pylist(), dtype=object)
            ids[view.name] = pool

        def sample() -> dict[str, np.ndarray]:
            out: dict[str, np.ndarray] = {}
            for name, pool in ids.items():
                chosen = rng.choice(pool, batch).astype(object)
                chosen[rng.random(batch) < unknown] = "unknown-entity"
                out[name] = chosen
            return out

        timings: list[float] = []
        for _ in range(batches):
            chosen = sample()
            t0 = time.perf_counter()
            online.lookup(chosen["account"], chosen["card"], chosen["merchant"])
            timings.append(time.perf_counter() - t0)
        p50, p99 = _percentiles(timings)
        click.echo(
            f"OnlineFeatures.lookup  batch {batch}: "
            f"{batch * len(timings) / sum(timings):,.0f} rows/s, "
            f"p50 {p50:.2f} ms, p99 {p99:.2f} ms ({len(online.entity_feature_names)} features)"
        )

        store = feature_store(settings)
        refs = [n.replace("__", ":", 1) for n in online.entity_feature_names]
        timings = []
        for _ in range(feast_batches):
            chosen = sample()
            rows = [
                {"account_id": a, "card_id": c, "merchant_id": m}
                for a, c, m in zip(
                    chosen["account"], chosen["card"], chosen["merchant"], strict=True
                )
            ]
            t0 = time.perf_counter()
            store.get_online_features(features=refs, entity_rows=rows, full_feature_names=True)
            timings.append(time.perf_counter() - t0)
        p50, p99 = _percentiles(timings)
        click.echo(
            f"Feast get_online_features batch {batch}: "
            f"{batch * len(timings) / sum(timings):,.0f} rows/s, "
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        )
