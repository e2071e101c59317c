"""``streamscore bench nightly``: the nightly job at scale, wall time per step and peak RSS.

Builds a ``--days`` history for ``--accounts`` accounts into a lake (or reuses one that an
earlier run wrote with the same arguments, ``--lake``), then runs the real nightly job
(:func:`streams.nightly.run_nightly`: dbt build, export, Feast apply, materialise) per
online store, SQLite and Redis (a local ``redis-server``, started by
:class:`streams.infra.redis.LocalRedis` for the run): first the night before (the first
run in a new home: dbt builds its entity states from the whole lake), then the measured
night, in the same home, which reads only what the lake got since (the run every later
night is). History generation is timed and measured apart from the nightly runs, and each
nightly run has a fresh process of its own (``spawn``), so one run's memory never counts
against the next.

Peak RSS per process: the nightly's Python process per step (the kernel's high-water mark,
``VmHWM``, reset through ``/proc/self/clear_refs`` as each step starts), dbt (its child:
polled with psutil every 50 ms, and bounded by ``RUSAGE_CHILDREN``), the Redis server
(polled, its AOF-rewrite fork included) and ``together``, the largest sum of all of them
seen at one poll. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import resource
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

if TYPE_CHECKING:
    from streams.settings import Settings

__all__ = [
    "END",
    "HistoryResult",
    "PeakMeter",
    "StoreResult",
    "ensure_history",
    "nightly",
    "run_store",
    "summary",
]

MIB = 1024 * 1024
END = date(2024, 6, 1)  # last simulated day; the nightly date is the day after it
STORES = ("sqlite", "redis")
_MARKER = "history.json"


def _self_hwm_mb() -> float:
    """This process's peak RSS since the last reset (``VmHWM``), in MiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _reset_self_hwm() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux ≥ 4.0); where refused, peaks are lifetime."""
    with suppress(OSError), open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
        clear.write("5")


def _kind(cmdline: list[str]) -> str:
    """What a child process is, for the report: dbt, redis-server (and its forks), or its name."""
    if any(Path(part).name == "dbt" for part in cmdline[:2]):
        return "dbt"
    name = Path(cmdline[0]).name if cmdline else ""
    # redis-server and its AOF-rewrite fork; anything else (multiprocessing's resource
    # tracker, a shell) is "other"
    return "redis_server" if name.startswith("redis") else "other"


class PeakMeter:
    """The largest RSS of each kind of child process, and of this process plus all of its
    children at one moment, polled every ``interval`` seconds by a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.children: dict[str, float] = {}
        self.together = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> PeakMeter:
        self._thread = threading.Thread(target=self._poll, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _poll(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(self.interval):
            total = 0.0
            seen: dict[str, float] = {}
            with suppress(psutil.Error):
                total += me.memory_info().rss / MIB
            children: list[psutil.Process] = []
            with suppress(psutil.Error):
                children = me.children(recursive=True)
            for child in children:
                try:
                    rss = child.memory_info().rss / MIB
                    kind = _kind(child.cmdline())
                except psutil.Error:
                    continue
                total += rss
                seen[kind] = seen.get(kind, 0.0) + rss
            with self._lock:
                for kind, rss in seen.items():
                    self.children[kind] = max(self.children.get(kind, 0.0), rss)
                self.together = max(self.together, total)


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """The lake the nightly runs read: its size and what writing it cost."""

    lake: Path
    accounts: int
    days: int
    seed: int
    rows: dict[str, int]
    cards: int
    merchants: int
    seconds: float  # what writing it took (when reused: the run that wrote it)
    peak_rss_mb: float
    reused: bool


def ensure_history(lake: Path, accounts: int, days: int, seed: int) -> HistoryResult:
    """A ``days``-day history of ``accounts`` accounts ending on ``END`` in ``lake``, written
    unless the lake already holds one written with the same arguments (its
    ``history.json`` says so)."""
    from streams.simulate.history import write_history
    from streams.simulate.population import build_population

    marker = lake / _MARKER
    wanted = {"accounts": accounts, "days": days, "seed": seed, "end": END.isoformat()}
    if marker.is_file():
        known = json.loads(marker.read_text(encoding="utf-8"))
        if {k: known.get(k) for k in wanted} == wanted:
            return HistoryResult(
                lake, accounts, days, seed, known["rows"], known["cards"], known["merchants"],
                known.get("seconds", 0.0), known.get("peak_rss_mb", 0.0), reused=True,
            )  # fmt: skip
    if lake.exists():
        shutil.rmtree(lake)
    _reset_self_hwm()
    report = write_history(str(lake), END, days=days, accounts=accounts, seed=seed)
    peak = _self_hwm_mb()
    population = build_population(accounts, seed)
    cards, merchants = len(population.card_ids), population.merchants
    seconds, peak_mb = round(report.seconds, 3), round(peak, 1)
    marker.write_text(
        json.dumps(
            {
                **wanted,
                "rows": report.rows,
                "cards": cards,
                "merchants": merchants,
                "seconds": seconds,
                "peak_rss_mb": peak_mb,
            }
        ),
        encoding="utf-8",
    )
    return HistoryResult(
        lake, accounts, days, seed, dict(report.rows), cards, merchants, seconds, peak_mb,
        reused=False,
    )  # fmt: skip


@dataclass(slots=True)
class StoreResult:
    """One nightly run against one online store."""

    store: str
    nightly_s: float
    steps_s: dict[str, float]
    peak_rss_mb: dict[str, float]
    rows: dict[str, int]
    extra: dict[str, Any] = field(default_factory=dict)


@contextmanager
def _local_redis(settings: Settings) -> Iterator[dict[str, Any]]:
    """A redis-server of the run's own; yields a dict that gets its ``used_memory_peak``."""
    from streams.features.store import redis_client
    from streams.infra.redis import LocalRedis

    server = LocalRedis(settings)
    server.up(timeout=600)  # the night before left gigabytes to load
    facts: dict[str, Any] = {}
    try:
        yield facts
        info: Any = redis_client(settings).info("memory")
        facts["redis_used_memory_peak_mb"] = round(int(info["used_memory_peak"]) / MIB, 1)
    finally:
        server.down()


def run_store(
    settings: Settings, nightly_date: date, *, log: Path, progress: Callable[[str], None]
) -> StoreResult:
    """Run the nightly job once for ``settings.online_store`` in this process; time and
    measure each step (call it in a fresh process: peaks are since the process began)."""
    from streams.nightly import run_nightly

    steps: dict[str, float] = {}
    current: list[str] = []

    def hear(message: str) -> None:
        # run_nightly announces each step as "<step> …": the previous one has just ended
        if current:
            steps[current[0]] = round(max(steps.get(current[0], 0.0), _self_hwm_mb()), 1)
            current.clear()
        if message.endswith(" …"):
            current.append(message.removesuffix(" …"))
            _reset_self_hwm()
        progress(f"  [{settings.online_store}] {message}")

    facts: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        if settings.online_store == "redis":
            facts = stack.enter_context(_local_redis(settings))
        with PeakMeter() as meter:
            _reset_self_hwm()
            began = time.perf_counter()
            run = run_nightly(settings, nightly_date, progress=hear, output=log)
            elapsed = time.perf_counter() - began
            hear("done")
            children_max = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    peaks: dict[str, float] = {"nightly": max(steps.values(), default=round(_self_hwm_mb(), 1))}
    for kind, mb in sorted(meter.children.items()):
        peaks[kind] = round(mb, 1)
    if children_max:  # dbt is the only child this process waited for: its exact peak
        peaks["dbt"] = round(max(peaks.get("dbt", 0.0), children_max), 1)
    peaks["together"] = round(max(meter.together, peaks["nightly"]), 1)
    peaks.update({f"nightly.{name}": mb for name, mb in steps.items()})
    durations = {k: v for k, v in run.durations_s.items() if k != "total"}
    result = StoreResult(settings.online_store, round(elapsed, 3), durations, peaks, run.rows)
    result.extra.update(facts)
    online = settings.home / "feast" / "online.db"
    if settings.online_store == "sqlite" and online.is_file():
        result.extra["online_db_mb"] = round(online.stat().st_size / MIB, 1)
    return result


def _store_settings(root: Path, lake: Path, store: str, *, fresh: bool) -> Settings:
    from streams.settings import Settings

    home = root / f"home-{store}"
    if fresh and home.exists():
        shutil.rmtree(home)
    port = _free_port()
    return Settings(
        home=home,
        lake_dir=str(lake),
        clickhouse_dsn=f"chdb://{root / f'chdb-{store}'}",
        online_store=store,
        redis_port=port,
        redis_url=f"redis://127.0.0.1:{port}/0",
    )


def _child(
    connection: Any, root: str, lake: str, store: str, nightly_date: str, fresh: bool
) -> None:
    """A spawned process's work: one nightly run; its result (or error) goes to the pipe."""
    try:
        settings = _store_settings(Path(root), Path(lake), store, fresh=fresh)
        result = run_store(
            settings,
            date.fromisoformat(nightly_date),
            log=Path(root) / f"nightly-{store}-{nightly_date}.log",
            progress=lambda message: connection.send(("progress", message)),
        )
        connection.send(("result", asdict(result)))
    except Exception as exc:  # reported by the parent, which exits non-zero
        connection.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        connection.close()


def run_store_in_child(
    root: Path,
    lake: Path,
    store: str,
    nightly_date: date,
    progress: Callable[[str], None],
    *,
    fresh: bool = True,
) -> StoreResult:
    """:func:`run_store` in a fresh ``spawn`` process, progress relayed; ``fresh``: in a new
    home (else in the one the last run left)."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(
        target=_child,
        args=(send, str(root), str(lake), store, nightly_date.isoformat(), fresh),
        name=f"nightly-{store}",
    )
    process.start()
    send.close()
    outcome: tuple[str, Any] | None = None
    try:
        while True:
            try:
                kind, payload = receive.recv()
            except EOFError:
                break
            if kind == "progress":
                progress(payload)
            else:
                outcome = (kind, payload)
    finally:
        process.join()
    if outcome is None:
        raise click.ClickException(f"the {store} nightly run died (exit {process.exitcode})")
    kind, payload = outcome
    if kind == "error":
        raise click.ClickException(f"the {store} nightly run failed: {payload}")
    return StoreResult(**payload)


def summary(
    history: HistoryResult,
    results: list[StoreResult],
    before: dict[str, StoreResult] | None = None,
) -> dict[str, Any]:
    """The closing JSON object: the first store's measured night at the top level, every
    run below (``before``: each store's night before, when it ran)."""
    first = results[0]
    before = before or {}

    def night(r: StoreResult) -> dict[str, Any]:
        return {"nightly_s": r.nightly_s, "steps_s": r.steps_s, "peak_rss_mb": r.peak_rss_mb}

    return {
        "accounts": history.accounts,
        "cards": history.cards,
        "merchants": history.merchants,
        "days": history.days,
        "transactions": history.rows.get("transaction", 0),
        "history_s": history.seconds,
        "history_reused": history.reused,
        "history_peak_rss_mb": history.peak_rss_mb,
        "store": first.store,
        "nightly_s": first.nightly_s,
        "steps_s": first.steps_s,
        "peak_rss_mb": first.peak_rss_mb,
        "rows": first.rows,
        "stores": {
            r.store: {
                **night(r),
                **r.extra,
                **({"night_before": night(before[r.store])} if r.store in before else {}),
            }
            for r in results
        },
    }


@click.command("nightly")
@click.option("--accounts", default=100_000, show_default=True, help="Simulated accounts.")
@click.option("--days", default=90, show_default=True, help="Days of history.")
@click.option("--seed", default=7, show_default=True, help="Simulation seed.")
@click.option(
    "--stores",
    default=",".join(STORES),
    show_default=True,
    help="Online stores to materialise to, one nightly run each, in this order.",
)
@click.option(
    "--lake",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Keep the history here and reuse it when it was written with the same arguments "
    "(default: in the work folder).",
)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the homes go, kept for a look afterwards (default: a temporary folder, "
    "each home removed after its store's runs).",
)
@click.option(
    "--night-before/--no-night-before",
    default=True,
    show_default=True,
    help="Run the night before first, in the same home (its entity states are what the "
    "measured night merges into); without: the measured night is a home's first.",
)
@click.option("--json", "as_json", is_flag=True, help="End with one JSON object.")
def nightly(
    accounts: int,
    days: int,
    seed: int,
    stores: str,
    lake: Path | None,
    workdir: Path | None,
    night_before: bool,
    as_json: bool,
) -> None:
    """The nightly job (dbt, export, Feast apply, materialise) at ``--accounts`` accounts."""
    chosen = [s.strip() for s in stores.split(",") if s.strip()]
    if not chosen or set(chosen) - set(STORES) or len(set(chosen)) != len(chosen):
        raise click.BadParameter(
            f"one or more of {', '.join(STORES)}, each once; not {stores!r}", param_hint="--stores"
        )

    def say(message: str) -> None:
        click.echo(message, err=as_json)

    with tempfile.TemporaryDirectory(prefix="streamscore-bench-nightly-") as scratch:
        root = workdir or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        say(f"history: {accounts:,} accounts, {days} days …")
        history = ensure_history(lake or root / "lake", accounts, days, seed)
        say(
            f"history: {history.rows} ({history.cards:,} cards, {history.merchants:,} "
            f"merchants) in {history.seconds:.1f}s, peak RSS {history.peak_rss_mb:.0f} MiB"
            + (" (reused)" if history.reused else "")
        )
        nightly_date = END + timedelta(days=1)
        results: list[StoreResult] = []
        before: dict[str, StoreResult] = {}
        for store in chosen:
            if night_before:
                previous = nightly_date - timedelta(days=1)
                say(f"the night before, {previous} → {store} (a new home: {root})")
                before[store] = run_store_in_child(root, history.lake, store, previous, say)
                say(f"  {store}, the night before: {before[store].nightly_s:.1f}s "
                    f"{before[store].steps_s}")  # fmt: skip
            say(f"nightly {nightly_date} → {store} (dbt's and Feast's output: {root})")
            result = run_store_in_child(
                root, history.lake, store, nightly_date, say, fresh=not night_before
            )
            results.append(result)
            say(
                f"  {store}: {result.nightly_s:.1f}s {result.steps_s} "
                f"peak RSS {result.peak_rss_mb} MiB rows {result.rows}"
            )
            if workdir is None:  # a temporary folder's homes go now: 23 GB at 1M (SQLite)
                shutil.rmtree(root / f"home-{store}", ignore_errors=True)
        out = summary(history, results, before)
    if as_json:
        click.echo(orjson.dumps(out).decode())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
