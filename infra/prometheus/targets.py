"""Print Prometheus's file_sd target list for the processes `streamscore worker` starts.

Run it with the worker's own ``STREAMSCORE_*`` settings (the supervisor's topology decides
which process serves ``/metrics`` on which port) and write the list where the compose
Prometheus reads it; Prometheus picks up the change by itself:

    STREAMSCORE_SCORERS=8 .venv/bin/python infra/prometheus/targets.py \\
        > infra/prometheus/targets/streamscore.json

Each target is labelled ``process`` (``stages``, ``score-0``, …, or ``worker`` when one
process runs every stage), so dashboards can tell the processes apart.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from streams.runtime.supervisor import Process, topology
from streams.settings import Settings

__all__ = ["main", "targets"]

HOST = "127.0.0.1"  # the worker's web server binds to loopback only (streams.app)


def processes(settings: Settings) -> list[Process]:
    """The worker processes of ``settings``, as ``streamscore worker`` starts them."""
    if settings.scoring_processes and "score" in settings.agent_names:
        return topology(settings)
    return [Process("worker", {})]  # STREAMSCORE_SCORERS=0: every stage in one process


def targets(settings: Settings) -> list[dict[str, Any]]:
    """One file_sd entry per process that serves ``/metrics`` (its web server is on)."""
    out: list[dict[str, Any]] = []
    for process in processes(settings):
        env = settings.to_env(**process.env)
        if env["STREAMSCORE_WEB_ENABLED"] != "true":
            continue
        port = env["STREAMSCORE_WEB_PORT"]
        out.append({"targets": [f"{HOST}:{port}"], "labels": {"process": process.name}})
    return out


def main() -> None:
    json.dump(targets(Settings()), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
