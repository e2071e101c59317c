"""What an analyst's statement is, decided by ClickHouse's own parser, and whether it may run.

No hand-written tokenizer: ClickHouse re-formats the text (``formatQuerySingleLine``, which
also refuses multi-statements), ``EXPLAIN AST`` of that canonical text names every
function, table function and table, and ``EXPLAIN QUERY TREE`` resolves every table a
``SELECT`` reads (``x IN db.t``, unqualified names). Comments, heredocs and quoting tricks
cannot hide anything, because what is checked and what runs is ClickHouse's own re-formatted
statement, never the user's text.

Allowed: one ``SELECT`` (``WITH``, ``UNION``, ``INTERSECT``…), ``EXPLAIN [AST|SYNTAX|QUERY
TREE|PLAN|PIPELINE|ESTIMATE] <select>``, ``SHOW TABLES [FROM db]``, ``SHOW DATABASES``,
``DESCRIBE TABLE t`` and ``EXISTS [TABLE|VIEW] t``. Refused: any other statement,
``INTO OUTFILE``, ``FORMAT``, ``SETTINGS`` (and EXPLAIN options), table functions outside
:data:`TABLE_FUNCTIONS`, functions that read the host or outside sources
(:data:`DENIED_FUNCTIONS`), tables outside the project's database and
:data:`SYSTEM_TABLES`, client-side ``%(name)s`` substitution.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streams.errors import QueryRefused
from streams.text import bounded

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

__all__ = [
    "DENIED_FUNCTIONS",
    "SYSTEM_TABLES",
    "TABLE_FUNCTIONS",
    "Statement",
    "check_parameters",
    "check_statement",
]

# Table functions that read nothing but their arguments (``view`` and ``values`` wrap
# checked subqueries or literals). Every other one (file, url, s3, remote*, mysql,
# postgresql, executable, input, dictionary, merge, …) is refused.
TABLE_FUNCTIONS = frozenset(
    {"numbers", "numbers_mt", "zeros", "zeros_mt", "generate_series", "values", "view", "null"}
)
_TABLE_FUNCTIONS_LOWER = frozenset(name.lower() for name in TABLE_FUNCTIONS | {"generateSeries"})
# Ordinary functions that read the host, a dictionary's source or a model file, or only
# hold a thread (lower-cased). ``dict*`` is refused as a prefix.
DENIED_FUNCTIONS = frozenset(
    {
        "file",
        "catboostevaluate",
        "joinget",
        "joingetornull",
        "getmacro",
        "getserversetting",
        "getmergetreesetting",
        "getclienthttpheader",
        "filesystemavailable",
        "filesystemcapacity",
        "filesystemunreserved",
        "sleep",
        "sleepeachrow",
        "addresstoline",
        "addresstolinewithinlines",
        "addresstosymbol",
        "demangle",
        "trap",
        "logtrace",
        "globalvariable",
        "input",
        "url",
        "s3",
        "remote",
    }
)
DENIED_PREFIXES = ("dict",)  # dictGet*, dictHas, …: a dictionary's source is outside
# The system tables an analyst may read: harmless generators and the catalogue.
SYSTEM_TABLES = frozenset(
    {
        "system.one",
        "system.numbers",
        "system.numbers_mt",
        "system.zeros",
        "system.zeros_mt",
        "system.tables",
        "system.columns",
        "system.databases",
    }
)
_EXPLAIN_KINDS = ("AST ", "SYNTAX ", "QUERY TREE ", "PLAN ", "PIPELINE ", "ESTIMATE ", "")
_SELECT_ROOTS = frozenset({"SelectWithUnionQuery", "SelectIntersectExceptQuery"})
# ClickHouse's canonical output quotes an identifier in backquotes only when it must.
_NAME = r"(?:`[^`]+`|[A-Za-z_][A-Za-z0-9_]*)"
_TABLE_NAME = re.compile(rf"^({_NAME})(?:\.({_NAME}))?$")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):[^{}]+\}")
_PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_AST_LINE = re.compile(r"^( *)(\S+) ?(.*)$")
_QUERY_TREE_TABLE = re.compile(r"^ *TABLE id: \d+,.* table_name: (\S+)")
_QUERY_TREE_FUNCTION = re.compile(r"^ *TABLE_FUNCTION id: \d+,.* table_function_name: (\S+)")
_CLICKHOUSE_CODE = re.compile(r" ?\(([A-Z][A-Z_]+)\)\W*$")  # "... (SYNTAX_ERROR)" at the end
MESSAGE_CHARS = 1000


@dataclass(frozen=True, slots=True)
class Statement:
    """A checked statement: its kind and ClickHouse's re-formatted text (what runs)."""

    kind: str  # select, explain, show, describe, exists
    text: str


def check_parameters(parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """Parameter names must be identifiers (they become ``{name:Type}`` bindings)."""
    checked: dict[str, Any] = {}
    for name, value in (parameters or {}).items():
        if not isinstance(name, str) or not _PARAMETER_NAME.match(name):
            raise QueryRefused(f"parameter name {name!r} is not an identifier")
        checked[name] = value
    return checked


def check_statement(
    client: Client, sql: str, parameters: Mapping[str, Any], database: str
) -> Statement:
    """The one read-only statement in ``sql``, re-formatted by ClickHouse, or QueryRefused.

    ``client`` must be a read-only session: the checks only parse and analyse, but they
    run ClickHouse functions on the user's text.
    """
    if not sql.strip():
        raise QueryRefused("the query is empty")
    text = _format(client, sql)
    if _format(client, text) != text:
        raise QueryRefused(f"ClickHouse does not format {text!r:.200} back to itself; refused")
    _check_placeholders(text, parameters)
    upper = text.upper()
    if upper.startswith(("SELECT ", "WITH ", "(")):
        _check_select(client, text, parameters, database)
        return Statement("select", text)
    if upper.startswith("EXPLAIN "):
        rest = text[len("EXPLAIN ") :]
        kind = next(k for k in _EXPLAIN_KINDS if rest.upper().startswith(k))
        inner = rest[len(kind) :]
        if (
            not inner.upper().startswith(("SELECT ", "WITH ", "("))
            or _format_or_none(client, inner) != inner
        ):
            raise QueryRefused(
                "read-only: EXPLAIN takes a SELECT and no options "
                "(EXPLAIN [AST|SYNTAX|QUERY TREE|PLAN|PIPELINE|ESTIMATE] SELECT …)"
            )
        _check_select(client, inner, parameters, database)
        return Statement("explain", text)
    if upper in ("SHOW TABLES", "SHOW DATABASES"):
        return Statement("show", text)
    if upper.startswith("SHOW TABLES FROM "):
        db = _unquote(text[len("SHOW TABLES FROM ") :])
        if db != database:
            raise QueryRefused(f"SHOW TABLES FROM {db}: only the database {database} is open")
        return Statement("show", text)
    for prefix, kind in (
        ("DESCRIBE TABLE ", "describe"),
        ("EXISTS TABLE ", "exists"),
        ("EXISTS VIEW ", "exists"),
    ):
        if upper.startswith(prefix):
            _check_table_name(text[len(prefix) :], database)
            return Statement(kind, text)
    first = text.split(" ", 1)[0].upper()
    raise QueryRefused(
        f"read-only: {first} statements are refused (only SELECT, WITH … SELECT, EXPLAIN "
        "SELECT, SHOW TABLES, SHOW DATABASES, DESCRIBE TABLE and EXISTS; use "
        "`streamscore sql --write` on a direct connection)"
    )


# ---- the parser's answers -------------------------------------------------------------


def clickhouse_message(exc: BaseException) -> str:
    """The ``DB::Exception`` text and code of a ClickHouse error, without the noise.

    String operations only (no regex over the text, which may quote a 1 MiB query), and
    cut to :data:`MESSAGE_CHARS` with a marker.
    """
    text = str(exc).strip()
    start = text.rfind("DB::Exception: ")
    body = text[start + len("DB::Exception: ") :] if start >= 0 else text
    tail = max(0, len(body) - 100)
    code = _CLICKHOUSE_CODE.search(body, tail)
    if code:
        body = body[: code.start()]
    for noise in (" (version ", ". : In scope ", ": In scope "):
        cut = body.find(noise)
        if cut >= 0:
            body = body[:cut]
    body = body.rstrip(" .")
    if code:
        body = body.removesuffix(f"({code.group(1)})").rstrip(" .")
    message = bounded(body, MESSAGE_CHARS) or type(exc).__name__
    return f"{message} ({code.group(1)})" if code else message


def _scalar_rows(client: Client, sql: str, parameters: Mapping[str, Any]) -> list[str]:
    result = client.query(sql, parameters=dict(parameters))
    return [str(row[0]) for row in result.result_rows]


def _format(client: Client, sql: str) -> str:
    try:
        [text] = _scalar_rows(client, "SELECT formatQuerySingleLine({q:String})", {"q": sql})
    except QueryRefused:
        raise
    except Exception as exc:
        message = clickhouse_message(exc)
        if "Multi-statements are not allowed" in message:
            raise QueryRefused(
                "one statement at a time: ClickHouse reads more than one statement here "
                f"({message})"
            ) from exc
        hint = (
            "; client-side %(name)s substitution is refused: write {name:Type}"
            if "%(" in sql
            else ""
        )
        raise QueryRefused(f"ClickHouse cannot parse the query: {message}{hint}") from exc
    return text


def _format_or_none(client: Client, sql: str) -> str | None:
    try:
        return _format(client, sql)
    except QueryRefused:
        return None


def _check_placeholders(text: str, parameters: Mapping[str, Any]) -> None:
    """Parameters bind server-side only: clickhouse-connect substitutes ``%(name)s`` in
    Python when the text holds no ``{name:Type}``, which could escape a string."""
    if not parameters:
        return
    named = set(_PLACEHOLDER.findall(text))
    if not named:
        raise QueryRefused(
            "parameters bind only to server-side {name:Type} placeholders; client-side "
            "%(name)s substitution is refused"
        )
    unused = sorted(set(parameters) - named)
    if unused:
        raise QueryRefused(f"parameters {unused} have no {{name:Type}} placeholder in the query")


def _explain(client: Client, kind: str, text: str, parameters: Mapping[str, Any]) -> list[str]:
    # As a subquery, EXPLAIN accepts only a SELECT and refuses output options (FORMAT,
    # INTO OUTFILE), and clickhouse-connect's own FORMAT lands on the outer query.
    try:
        # ``text`` is ClickHouse's own re-formatting of one statement, not the user's text.
        explain = f"SELECT explain FROM (EXPLAIN {kind} {text})"  # noqa: S608
        return _scalar_rows(client, explain, parameters)
    except Exception as exc:
        message = clickhouse_message(exc)
        if "output options" in message:
            raise QueryRefused(
                "INTO OUTFILE and FORMAT are refused: choose the output with --format "
                '(or "format"); nothing is written on the server'
            ) from exc
        raise QueryRefused(f"ClickHouse refused the statement: {message}") from exc


# ---- the rules -----------------------------------------------------------------------


def _check_select(client: Client, text: str, parameters: Mapping[str, Any], database: str) -> None:
    nodes = _parse_ast(_explain(client, "AST", text, parameters))
    if not nodes or nodes[0][1] not in _SELECT_ROOTS:
        raise QueryRefused(f"read-only: {text.split(' ', 1)[0]} is not a SELECT")
    parents: list[str] = []
    for depth, kind, argument in nodes:
        del parents[depth:]
        parent = parents[-1] if parents else ""
        parents.append(kind)
        if kind == "Set":
            raise QueryRefused(
                "SETTINGS clauses are refused: the limits of analysts' queries are fixed"
            )
        if kind == "Function":
            _check_function(argument, in_from=parent == "TableExpression", database=database)
        elif kind == "TableIdentifier" and "." in argument:
            _check_table(argument, database)
    # The analyser resolves what the AST leaves open (``x IN db.t``, unqualified names).
    for line in _explain(client, "QUERY TREE", text, parameters):
        match = _QUERY_TREE_TABLE.match(line)
        if match:
            _check_table(match.group(1), database)
        match = _QUERY_TREE_FUNCTION.match(line)
        if match:
            _check_table_function(match.group(1), database)


def _parse_ast(lines: list[str]) -> list[tuple[int, str, str]]:
    """``(depth, node kind, argument)`` per line of ``EXPLAIN AST``."""
    nodes: list[tuple[int, str, str]] = []
    for line in lines:
        match = _AST_LINE.match(line)
        if match:
            # The node's own name is the first word: an alias (``(alias …)``) follows it
            # and may hold any text.
            argument = match.group(3).split(" ", 1)[0]
            nodes.append((len(match.group(1)), match.group(2), argument))
    return nodes


def _check_function(name: str, *, in_from: bool, database: str) -> None:
    lowered = name.lower()
    if in_from:
        _check_table_function(name, database)
        return
    if lowered in DENIED_FUNCTIONS or lowered.startswith(DENIED_PREFIXES):
        raise QueryRefused(
            f"function {name}() is refused in analysts' queries: it reads the host, a "
            "dictionary's source or a model file, or only holds a thread"
        )


def _check_table_function(name: str, database: str) -> None:
    if "." in name:  # db.view(...) is a parameterised view, never a table function
        _check_table(name, database)
    elif name.lower() not in _TABLE_FUNCTIONS_LOWER:
        raise QueryRefused(
            f"table function {name}() is refused: analysts read the {database} database "
            f"and {', '.join(sorted(TABLE_FUNCTIONS))}() (a parameterised view needs its "
            f"database: {database}.{name}(...))"
        )


def _check_table(name: str, database: str) -> None:
    db, _, table = name.partition(".")
    if db == database and table:
        return
    if name in SYSTEM_TABLES:
        return
    raise QueryRefused(
        f"table {name} is refused: analysts read the {database} database and "
        f"{', '.join(sorted(SYSTEM_TABLES))}"
    )


def _check_table_name(text: str, database: str) -> None:
    match = _TABLE_NAME.match(text)
    if not match:
        raise QueryRefused(f"{text!r:.200} is not a table name")
    first, second = match.group(1), match.group(2)
    if second is None:
        _check_table(f"{database}.{_unquote(first)}", database)
    else:
        _check_table(f"{_unquote(first)}.{_unquote(second)}", database)


def _unquote(name: str) -> str:
    return name[1:-1] if name.startswith("`") and name.endswith("`") else name
