"""``streamscore replay``: the --features option and the report of runs and disagreements."""

from __future__ import annotations

import click
from click.testing import CliRunner

from streams.cli.main import cli
from streams.cli.replay import report_features
from streams.replay import RescoreCounts


def _printed(counts: RescoreCounts) -> str:
    @click.command()
    def show() -> None:
        report_features(counts)

    result = CliRunner().invoke(show, [])
    assert result.exit_code == 0, result.output
    return result.output


def test_features_option_defaults_to_as_of_and_refuses_others() -> None:
    runner = CliRunner()
    shown = runner.invoke(cli, ["replay", "--help"])
    assert shown.exit_code == 0
    text = " ".join(shown.output.split())  # help is wrapped to the terminal's width
    assert "--features [as-of-event-time|current]" in text
    assert "[default: as-of-event-time]" in text
    assert "--as-of-event-time Same as --features as-of-event-time" in text
    bad = runner.invoke(cli, ["replay", "--from-offset", "0:0", "--features", "nightly"])
    assert bad.exit_code == 2 and "'nightly' is not one of" in bad.output


def test_report_names_runs_unserved_events_and_disagreements() -> None:
    counts = RescoreCounts(
        features="as-of-event-time",
        runs_used={"run-a": 40, "run-b": 60},
        no_run=3,
        run_not_kept={"run-old": 5},
        run_changed={("run-a", "run-b"): 7, ("", "run-b"): 1},
        rows_compared=200,
        scores_changed=9,
        snapshots_loaded=2,
        first_live="2024-05-01T02:00:00+00:00",
    )
    assert counts.run_mismatch == 8 and counts.unserved == 8
    out = _printed(counts)
    assert "as of event time; 2 run snapshots loaded" in out
    assert "run-b" in out and "60 events" in out
    assert "3 events before the first nightly run was live (2024-05-01T02:00:00+00:00)" in out
    assert "5 events of run run-old: its features were not kept" in out
    assert "9  of 200 rows already there" in out
    assert "8 events scored with another feature run" in out
    assert "run-a → run-b: 7" in out and "(none recorded) → run-b: 1" in out


def test_a_clean_replay_reports_no_disagreement() -> None:
    counts = RescoreCounts(features="current", runs_used={"run-b": 10}, rows_compared=20)
    out = _printed(counts)
    assert "current (live now)" in out and "0  of 20 rows" in out
    assert "NOT SCORED" not in out and "RUN DIFFERS" not in out


def test_counts_add_up_across_batches() -> None:
    total = RescoreCounts()
    for _ in range(2):
        total.add(
            RescoreCounts(
                read=5, runs_used={"a": 2}, run_changed={("x", "a"): 1}, no_run=1,
                run_not_kept={"old": 1}, rows_compared=4, scores_changed=1, snapshots_loaded=1,
            )
        )  # fmt: skip
    assert (total.read, total.runs_used, total.run_changed) == (10, {"a": 4}, {("x", "a"): 2})
    assert (total.no_run, total.run_not_kept, total.rows_compared) == (2, {"old": 2}, 8)
    assert (total.scores_changed, total.snapshots_loaded, total.unserved) == (2, 2, 4)
