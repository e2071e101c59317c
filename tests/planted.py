"""A password planted in the tests' settings, and the check that no test log shows it.

Integration workers carry it (``STREAMSCORE_REDIS_PASSWORD``) in every process's settings
and unit tests send it through connection errors, fake servers and status output; after a
run, ``make unit`` and ``make integration`` call ``python -m tests.planted <logs>...``,
which fails when any file there (pytest's log file, its JUnit XML with every test's
captured output, and the workers' logs under the run's basetemp) holds it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

PLANTED = "hunter2-PLANTED"


def _files(roots: list[Path]) -> Iterator[Path]:
    for root in roots:
        if root.is_file():
            yield root
        elif root.is_dir():
            yield from (path for path in sorted(root.rglob("*")) if path.is_file())


def leaks(roots: list[Path], secret: str = PLANTED) -> list[str]:
    """``file:line`` of every line under ``roots`` that holds ``secret``."""
    found: list[str] = []
    needle = secret.encode()
    for path in _files(roots):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if needle not in data:
            continue
        for number, line in enumerate(data.splitlines(), start=1):
            if needle in line:
                found.append(f"{path}:{number}")
    return found


def main(argv: list[str]) -> int:
    roots = [Path(arg) for arg in argv]
    found = leaks(roots)
    scanned = sum(1 for _ in _files(roots))
    if found:
        print(f"the planted password appears in {len(found)} log line(s):", file=sys.stderr)
        for where in found[:50]:
            print(f"  {where}", file=sys.stderr)
        return 1
    print(f"planted password: not in any of {scanned} log files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
