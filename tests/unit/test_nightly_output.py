"""The nightly run's tool output: Feast's prints, progress bars and log records to a file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from tqdm import tqdm

from streams.nightly import feast_output_to, stream_output


def _chatty_feast() -> None:
    """What Feast does while it materialises: print, draw a bar, log."""
    print("Materializing 3 feature views into the sqlite online store.")
    for _ in tqdm(range(3), ncols=100):
        pass
    logging.getLogger("feast.feature_store").warning("a feast warning")


def test_feast_output_goes_to_the_file_and_nowhere_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    feast = logging.getLogger("feast")
    handlers, propagate = list(feast.handlers), feast.propagate
    path = tmp_path / "nightly.log"
    with path.open("a", encoding="utf-8") as log, feast_output_to(log):
        _chatty_feast()
    text = path.read_text(encoding="utf-8")
    assert "Materializing 3 feature views" in text
    assert "3/3" in text  # the tqdm bar
    assert "WARNING feast.feature_store: a feast warning" in text
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    assert not [r for r in caplog.records if r.name.startswith("feast")]
    # Everything is as it was afterwards.
    assert feast.handlers == handlers and feast.propagate == propagate
    print("after")
    assert capsys.readouterr().out == "after\n"


def test_without_a_file_feast_output_is_left_alone(capsys: pytest.CaptureFixture[str]) -> None:
    with feast_output_to(None):
        print("Materializing")
    assert capsys.readouterr().out == "Materializing\n"


def test_stream_output_hands_over_stdout_and_stderr_lines_and_the_exit_code() -> None:
    heard: list[str] = []
    code = (
        "import sys; print('one', flush=True); print('two', file=sys.stderr, flush=True); "
        "sys.exit(3)"
    )
    returncode = stream_output([sys.executable, "-c", code], {}, heard.append)
    assert returncode == 3
    assert heard == ["one\n", "two\n"]
