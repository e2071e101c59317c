"""The planted-password check finds what it must (so a clean run means something)."""

from __future__ import annotations

from pathlib import Path

from tests.planted import PLANTED, leaks, main


def test_finds_the_planted_password_in_any_file_under_a_root(tmp_path: Path) -> None:
    (tmp_path / "w1").mkdir()
    (tmp_path / "w1" / "worker.log").write_bytes(b"ok\nredis password=" + PLANTED.encode())
    (tmp_path / "clean.log").write_text("nothing here\n")
    assert leaks([tmp_path]) == [f"{tmp_path / 'w1' / 'worker.log'}:2"]
    assert main([str(tmp_path)]) == 1
    (tmp_path / "w1" / "worker.log").write_text("redis password=***\n")
    assert main([str(tmp_path)]) == 0
