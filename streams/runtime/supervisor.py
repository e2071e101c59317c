"""``streamscore worker``: the topology as processes, supervised (``STREAMSCORE_SCORERS=N``
scoring processes, default one per core; ``0`` runs every stage in one process instead).

One process runs every stage but scoring (sink, DLQ, labels, lake): on chDB it is the one
that holds the data path, and it serves ``/sql`` and ``/metrics`` on
``STREAMSCORE_WEB_PORT``. N processes run the scoring stage, each its own faust worker in
the same consumer group (``<app_id>-score``), sharing the raw partitions; scoring process
``i`` serves ``/metrics`` on ``STREAMSCORE_WEB_PORT + 1 + i`` and reads ClickHouse through
the holder (``streams.clickhouse.reads``). Each stage can also be started alone
(``STREAMSCORE_AGENTS=score streamscore worker``) on other machines, joining the same groups.

Supervision: a process that exits on its own is logged with its exit code (or signal) and
started again, after a back-off that grows while it keeps failing within
``_HEALTHY_S`` of its start (1 s doubling to 30 s). SIGTERM or SIGINT stops every process
(SIGTERM, then SIGKILL after ``stop_s``) and returns. No data is at risk in a restart:
every stage stores offsets only after its outputs are confirmed, and the sinks are
idempotent on source coordinates.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

from streams.settings import Settings

__all__ = ["Process", "Supervisor", "run_supervisor", "topology"]

log = logging.getLogger("streams.runtime.supervisor")

_HEALTHY_S = 10.0  # a process that ran this long is restarted at once, without back-off
_BACKOFF_MAX_S = 30.0


@dataclass(frozen=True, slots=True)
class Process:
    """One supervised process: a name and the ``STREAMSCORE_*`` overrides it runs with."""

    name: str
    env: dict[str, str]


def topology(settings: Settings) -> list[Process]:
    """The processes of ``settings``' topology: the non-scoring stages, then N scorers."""
    stages = sorted(settings.agent_names - {"score"})
    scorers = settings.scoring_processes if "score" in settings.agent_names else 0
    common = {"STREAMSCORE_SCORERS": "0"}  # a child is one process, never a supervisor
    out: list[Process] = []
    if stages:
        env = {
            **common,
            "STREAMSCORE_AGENTS": ",".join(stages),
            "STREAMSCORE_WORKER_ID": f"{settings.worker_id}-stages",
        }
        if scorers and settings.clickhouse_url.startswith("chdb://"):
            env["STREAMSCORE_WEB_ENABLED"] = "true"  # scorers read chDB through its /sql
        out.append(Process("stages", env))
    for i in range(scorers):
        out.append(
            Process(
                f"score-{i}",
                {
                    **common,
                    "STREAMSCORE_AGENTS": "score",
                    "STREAMSCORE_WORKER_ID": f"{settings.worker_id}-score-{i}",
                    "STREAMSCORE_WEB_PORT": str(settings.web_port + 1 + i),
                    "STREAMSCORE_SQL_OWNER_PORT": str(settings.web_port),
                },
            )
        )
    return out


Spawn = Callable[[Process], "subprocess.Popen[bytes]"]


@dataclass(slots=True)
class _Running:
    process: Process
    popen: subprocess.Popen[bytes]
    started: float
    failures: int = 0
    restart_at: float | None = None


@dataclass(slots=True)
class Supervisor:
    """Starts ``processes`` with ``spawn`` and keeps them running until :meth:`stop`."""

    processes: Sequence[Process]
    spawn: Spawn
    clock: Callable[[], float] = time.monotonic
    stop_s: float = 30.0
    running: dict[str, _Running] = field(default_factory=dict)
    restarts: int = 0

    def start(self) -> None:
        for process in self.processes:
            self._start(process, failures=0)

    def _start(self, process: Process, failures: int) -> None:
        popen = self.spawn(process)
        self.running[process.name] = _Running(process, popen, self.clock(), failures)
        log.info("started %s (pid %d)", process.name, popen.pid)

    def poll(self) -> None:
        """Restart what exited (once its back-off has passed)."""
        now = self.clock()
        for name, run in list(self.running.items()):
            if run.restart_at is not None:
                if now >= run.restart_at:
                    self.restarts += 1
                    self._start(run.process, run.failures)
                continue
            code = run.popen.poll()
            if code is None:
                continue
            failures = 0 if now - run.started >= _HEALTHY_S else run.failures + 1
            delay = 0.0 if failures == 0 else min(_BACKOFF_MAX_S, 2.0 ** (failures - 1))
            log.error(
                "%s (pid %d) exited with %s; restarting in %.0f s",
                name, run.popen.pid, _exit_text(code), delay,
            )  # fmt: skip
            run.failures, run.restart_at = failures, now + delay

    def stop(self) -> None:
        """SIGTERM every process, SIGKILL what is left after ``stop_s``; reap them all."""
        alive = [r.popen for r in self.running.values() if r.restart_at is None]
        for popen in alive:
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
        deadline = self.clock() + self.stop_s
        for popen in alive:
            try:
                popen.wait(max(0.1, deadline - self.clock()))
            except subprocess.TimeoutExpired:
                log.warning("pid %d did not stop in %.0f s: SIGKILL", popen.pid, self.stop_s)
                popen.kill()
                popen.wait()
        self.running.clear()


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def spawner(settings: Settings) -> Spawn:
    """Start ``streamscore worker`` children; they log to this process's stdout/stderr."""

    def spawn(process: Process) -> subprocess.Popen[bytes]:
        env = {**os.environ, **settings.to_env(**process.env)}
        return subprocess.Popen([sys.executable, "-m", "streams.cli.main", "worker"], env=env)

    return spawn


def run_supervisor(settings: Settings, spawn: Spawn | None = None) -> None:
    """Run the topology until SIGTERM or SIGINT."""
    supervisor = Supervisor(topology(settings), spawn or spawner(settings))
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    names = ", ".join(p.name for p in supervisor.processes)
    log.info("supervising %d processes: %s", len(supervisor.processes), names)
    supervisor.start()
    try:
        while not stopping:
            time.sleep(0.2)
            supervisor.poll()
    finally:
        log.info("stopping %d processes", len(supervisor.running))
        supervisor.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
