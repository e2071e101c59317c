"""The analyst report: ClickHouse queries → dataclasses (``data``) → one self-contained HTML
page with inline SVG charts (``html``, ``svg``). ``streamscore report`` writes it."""

from __future__ import annotations

from streams.report.data import ReportData, collect
from streams.report.html import render_html

__all__ = ["ReportData", "collect", "render_html"]
