"""Benchmark: a 90-day history at 100,000 accounts into a temp lake; prints rows/s and peak RSS.

.venv/bin/python benchmarks/history_scale.py [--accounts N] [--days D]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
from datetime import date

from streams.simulate import write_history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=90)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        report = write_history(root, date(2026, 3, 31), args.days, args.accounts)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"accounts={args.accounts:,} days={args.days} "
        f"transactions={report.rows['transaction']:,} labels={report.rows['label']:,} "
        f"files={report.files} seconds={report.seconds:.1f} "
        f"rows/s={report.total_rows / report.seconds:,.0f} peak_rss={peak_mib:,.0f} MiB"
    )


if __name__ == "__main__":
    main()
