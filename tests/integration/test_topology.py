"""The supervised topology on the real broker and chDB: two scoring processes and the process
holding chDB, with scoring processes SIGKILLed mid-stream.

What a reader sees, as the scoring stage promises (at-least-once outputs, exactly-once
effect in ClickHouse): every raw offset ends exactly once in ``predictions`` (per model)
or in ``dlq_events``; on the decisions topic every valid event has a decision, and where a
kill made a scoring process send a batch again, each copy is the same decision.
"""

from __future__ import annotations

import collections
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.settings import Settings
from streams.simulate.records import SimRecord
from streams.topics import PREDICTIONS, topic_name
from tests.integration.conftest import (
    Coordinates,
    free_port,
    publish,
    query,
    read_topic,
    records,
    wait_for_log,
    wait_for_predictions,
    worker_env,
)
from tests.integration.test_scoring import stored_sources

pytestmark = pytest.mark.integration

STARTED = re.compile(r"started (score-\d) \(pid (\d+)\)")


def _scorer_pids(log: Path) -> dict[str, int]:
    """The newest pid of each scoring process, from the supervisor's log."""
    pids: dict[str, int] = {}
    for name, pid in STARTED.findall(log.read_text(errors="replace")):
        pids[name] = int(pid)
    return pids


def test_sigkill_of_scoring_processes_loses_and_duplicates_nothing(
    scoring_settings: Settings, tmp_path: Path
) -> None:
    settings = scoring_settings
    log = tmp_path / "supervisor.log"
    port = free_port()
    env = worker_env(
        settings,
        STREAMSCORE_AGENTS="score,sink,dlq",
        STREAMSCORE_SCORERS="2",
        STREAMSCORE_WEB_ENABLED="true",  # the holder's /sql is how scorers read chDB
        STREAMSCORE_WEB_PORT=str(port),
        STREAMSCORE_SCORE_BATCH_SIZE="500",
    )
    with log.open("wb") as out:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "streams.cli.main", "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the test can take down the whole group at the end
        )
    supervisor.log_path = log  # type: ignore[attr-defined]
    items = records(12_000, invalid_fraction=0.02, seed=17)
    landed: dict[Coordinates, SimRecord] = {}
    publisher = threading.Thread(
        target=lambda: landed.update(publish(settings, items, rate=250)), daemon=True
    )
    rng = random.Random(17)
    kills: list[str] = []
    try:
        publisher.start()
        wait_for_log(supervisor, "first batch of", timeout=120)
        while publisher.is_alive() and len(kills) < 5:
            time.sleep(rng.uniform(2.0, 6.0))
            name, pid = rng.choice(sorted(_scorer_pids(log).items()))
            os.kill(pid, signal.SIGKILL)
            kills.append(name)
            deadline = time.monotonic() + 30
            while _scorer_pids(log).get(name) == pid:  # until the supervisor restarted it
                assert time.monotonic() < deadline, f"{name} was not restarted; see {log}"
                assert supervisor.poll() is None, f"the supervisor exited; see {log}"
                time.sleep(0.1)
        publisher.join()
        valid = {c for c, r in landed.items() if r.expected == "accepted"}
        wait_for_predictions(
            settings, valid, timeout=240, worker=supervisor, drained=("sink", "dlq")
        )
        assert supervisor.poll() is None, "the supervisor must outlive its processes"
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(90) == 0
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait(10)
    text = log.read_text(errors="replace")
    assert len(kills) >= 3
    assert text.count("exited with signal SIGKILL") == len(kills)

    count, unique = query(
        settings,
        "select count(), uniqExact(topic, partition, offset, model_version) from {db}.predictions",
    )[0]
    predictions, dead = stored_sources(settings)
    assert predictions | dead == set(landed)  # every raw offset is somewhere ...
    assert not predictions & dead  # ... and in one place
    assert count == unique == 2 * len(valid)  # champion and shadow, once each

    decisions: dict[Coordinates, list[dict[str, Any]]] = collections.defaultdict(list)
    for message in read_topic(settings, topic_name(settings, PREDICTIONS), len(valid)):
        body = orjson.loads(message.value())
        source = body["source"]
        decisions[(source["topic"], source["partition"], source["offset"])].append(body)
    assert set(decisions) == valid
    same = ("event_id", "model_version", "score", "decision", "human_review", "challengers")
    copies = 0
    for bodies in decisions.values():
        copies += len(bodies) - 1
        assert len({tuple(orjson.dumps(b.get(k)) for k in same) for b in bodies}) == 1, bodies
    print(f"{len(kills)} kills: {copies} decisions read twice, each identical to the first")
