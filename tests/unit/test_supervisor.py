"""The supervised topology: which processes, what each runs, restarts with back-off, stop."""

from __future__ import annotations

import itertools
import logging
import signal
import subprocess
from pathlib import Path

import pytest

from streams.runtime.supervisor import Process, Supervisor, topology
from streams.settings import Settings


def test_the_topology_is_one_process_for_the_sinks_and_n_scorers(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, scorers=2, web_port=7000, worker_id="w")
    processes = topology(settings)
    assert [p.name for p in processes] == ["stages", "score-0", "score-1"]
    stages, first, second = (p.env for p in processes)
    assert stages["STREAMSCORE_AGENTS"] == "dlq,labels,lake,sink"
    assert "STREAMSCORE_WEB_PORT" not in stages  # the holder serves /sql on the base port
    assert first["STREAMSCORE_AGENTS"] == second["STREAMSCORE_AGENTS"] == "score"
    assert (first["STREAMSCORE_WEB_PORT"], second["STREAMSCORE_WEB_PORT"]) == ("7001", "7002")
    assert first["STREAMSCORE_SQL_OWNER_PORT"] == "7000"
    assert {p.env["STREAMSCORE_SCORERS"] for p in processes} == {"0"}  # no nested supervisors
    assert len({p.env["STREAMSCORE_WORKER_ID"] for p in processes}) == 3
    # Children are built from these settings: each override must be a valid setting.
    for process in processes:
        overrides = {k.removeprefix("STREAMSCORE_").lower(): v for k, v in process.env.items()}
        Settings(home=tmp_path, **overrides)  # type: ignore[arg-type]


def test_without_scoring_there_are_no_scorers(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, scorers=3, agents="dlq,sink")
    assert [p.name for p in topology(settings)] == ["stages"]


class FakePopen:
    pids = iter(range(100, 10_000))

    def __init__(self) -> None:
        self.pid = next(self.pids)
        self.returncode: int | None = None
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)
        self.returncode = -signum

    def wait(self, timeout: float | None = None) -> int:
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        self.returncode = -9


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _supervisor() -> tuple[Supervisor, dict[str, list[FakePopen]], Clock]:
    spawned: dict[str, list[FakePopen]] = {}

    def spawn(process: Process) -> subprocess.Popen[bytes]:
        popen = FakePopen()
        spawned.setdefault(process.name, []).append(popen)
        return popen  # type: ignore[return-value]

    clock = Clock()
    processes = [Process("stages", {}), Process("score-0", {})]
    return Supervisor(processes, spawn, clock=clock), spawned, clock


def test_a_killed_process_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    supervisor, spawned, clock = _supervisor()
    supervisor.start()
    clock.now = 60.0  # it ran well: restarted at once
    spawned["score-0"][0].returncode = -signal.SIGKILL
    with caplog.at_level(logging.ERROR, "streams.runtime.supervisor"):
        supervisor.poll()
        supervisor.poll()
    assert "score-0 (pid 101) exited with signal SIGKILL" in caplog.text
    assert len(spawned["score-0"]) == 2 and len(spawned["stages"]) == 1
    assert supervisor.restarts == 1


def test_a_process_failing_at_start_backs_off_doubling() -> None:
    supervisor, spawned, clock = _supervisor()
    supervisor.start()
    starts = []
    for _ in range(4):
        spawned["stages"][-1].returncode = 72  # fails within seconds of each start
        clock.now += 0.5
        supervisor.poll()
        before = len(spawned["stages"])
        while len(spawned["stages"]) == before:
            clock.now += 0.25
            supervisor.poll()
        starts.append(clock.now)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] < gaps[1] < gaps[2]  # 1 s, 2 s, 4 s (+ the half second it ran)
    assert len(spawned["score-0"]) == 1  # the healthy one was left alone


def test_stop_terminates_every_process() -> None:
    supervisor, spawned, _ = _supervisor()
    supervisor.start()
    supervisor.stop()
    assert all(p.signals == [signal.SIGTERM] for ps in spawned.values() for p in ps)
    assert not supervisor.running


def test_scorers_default_to_one_per_core_and_zero_means_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    assert Settings(home=tmp_path).scoring_processes == 3
    assert [p.name for p in topology(Settings(home=tmp_path))][1:] == [
        "score-0", "score-1", "score-2"
    ]  # fmt: skip
    assert Settings(home=tmp_path, scorers=0).scoring_processes == 0
