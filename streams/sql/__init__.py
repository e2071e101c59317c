"""Analysts' read-only SQL: what a statement is (ClickHouse's parser), where it runs (a fresh
read-only session with fixed limits), and how its answer looks.

Shared by ``streamscore sql``, the worker's ``POST /sql`` (``streams.web.query``) and the
report.
"""

from streams.sql.output import FORMATS, QueryOutput, jsonable, render
from streams.sql.session import (
    DEFAULT_MAX_ROWS,
    MAX_ROWS_LIMIT,
    QueryLimits,
    ReadOnlySQL,
    run_unchecked,
)
from streams.sql.statement import Statement, check_statement

__all__ = [
    "DEFAULT_MAX_ROWS",
    "FORMATS",
    "MAX_ROWS_LIMIT",
    "QueryLimits",
    "QueryOutput",
    "ReadOnlySQL",
    "Statement",
    "check_statement",
    "jsonable",
    "render",
    "run_unchecked",
]
