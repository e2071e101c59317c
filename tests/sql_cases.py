"""Hostile statements for the analysts' SQL path, shared by the CLI-path (unit) and the
HTTP-endpoint (integration) suites. ``{db}`` is the project's database, ``{victim}`` a file
path that must never appear; each case names a fragment of the refusal it must get.
"""

from __future__ import annotations

from typing import Any

# (sql, parameters, fragment of the error message)
HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    # The bypass that worked: a ' inside nested comments and heredocs hid INTO OUTFILE.
    (
        "SELECT $$x$$ AS c /* /* */ ' */ INTO OUTFILE $${victim}$$ APPEND -- '",
        {},
        "INTO OUTFILE and FORMAT are refused",
    ),
    ("select 1 into outfile '{victim}'", {}, "INTO OUTFILE"),
    ("select 1 # ' \ninto outfile '{victim}'", {}, "INTO OUTFILE"),
    ("select 1 /* ' */ into outfile '{victim}' truncate", {}, "INTO OUTFILE"),
    ("select 1 format CSV", {}, "FORMAT are refused"),
    ("select * from (select 1) format TabSeparated", {}, "FORMAT are refused"),
    # Multi-statements, whatever hides the ';'.
    ("select 1; drop table {db}.models", {}, "one statement at a time"),
    ("select 1 # '\n; drop table {db}.models", {}, "one statement at a time"),
    ("select $$;$$; drop table {db}.models", {}, "one statement at a time"),
    # Other statements.
    ("drop table {db}.models", {}, "DROP statements are refused"),
    ("insert into {db}.models (model_version) values ('evil')", {}, "INSERT statements"),
    ("with 1 as x insert into {db}.models (model_version) select 'x'", {}, "INSERT statements"),
    ("alter table {db}.models delete where 1", {}, "ALTER statements"),
    ("set readonly = 0", {}, "SET statements"),
    ("system flush logs", {}, "SYSTEM statements"),
    ("show processlist", {}, "SHOW statements"),
    ("show grants", {}, "SHOW statements"),
    ("create table {db}.x (a UInt8) engine = Memory", {}, "CREATE statements"),
    ("kill query where 1", {}, "KILL statements"),
    ("optimize table {db}.predictions final", {}, "OPTIMIZE statements"),
    # Settings: limits cannot be lifted.
    ("select 1 settings max_execution_time = 0", {}, "SETTINGS clauses are refused"),
    ("select * from numbers(3) settings max_result_rows = 0", {}, "SETTINGS clauses"),
    ("select * from (select 1 settings readonly = 0)", {}, "SETTINGS clauses"),
    ("explain pipeline header = 1 select 1", {}, "EXPLAIN takes a SELECT and no options"),
    # Table functions and functions that read the host or other sources.
    ("select * from file('/etc/passwd', 'LineAsString')", {}, "table function file()"),
    ("select * from file('/proc/self/environ', 'RawBLOB')", {}, "table function file()"),
    ("SELECT * FROM FILE('/etc/passwd', 'LineAsString')", {}, "table function FILE()"),
    ("select file('/proc/self/environ')", {}, "function file() is refused"),
    ("select * from url('http://127.0.0.1:9/x', 'CSV')", {}, "table function url()"),
    ("select * from s3('http://127.0.0.1:9/b/k', 'CSV')", {}, "table function s3()"),
    ("select * from remote('127.0.0.1:9', system.one)", {}, "table function remote()"),
    ("select * from mysql('127.0.0.1:9', 'd', 't', 'u', 'p')", {}, "table function mysql()"),
    (
        "select * from postgresql('127.0.0.1:9', 'd', 't', 'u', 'p')",
        {},
        "table function postgresql()",
    ),
    ("select * from executable('x.sh', 'CSV', 'a String')", {}, "table function executable()"),
    ("select * from input('a String')", {}, "table function input()"),
    ("select * from merge('system', '.*')", {}, "table function merge()"),
    ("select * from dictionary('d')", {}, "table function dictionary()"),
    ("select dictGet('d', 'x', 1)", {}, "function dictGet() is refused"),
    ("select sleepEachRow(3) from numbers(10)", {}, "function sleepEachRow() is refused"),
    # Forbidden functions anywhere: subqueries, unions, CTEs, IN, joins, EXPLAIN.
    ("select 1 union all select * from file('/etc/passwd')", {}, "table function file()"),
    (
        "with t as (select * from file('/etc/passwd', 'LineAsString')) select * from t",
        {},
        "table function file()",
    ),
    ("select 1 where 'x' in (select * from url('http://127.0.0.1:9/'))", {}, "url()"),
    (
        "select * from numbers(1) as n join file('/etc/passwd', 'LineAsString') as f on 1",
        {},
        "table function file()",
    ),
    ("explain select * from file('/etc/passwd')", {}, "table function file()"),
    ("explain ast select file('/etc/passwd')", {}, "function file() is refused"),
    # An alias that mimics the parser's own output does not hide the function's name.
    ("select file('/etc/passwd') as `x) (children 1)`", {}, "function file() is refused"),
    # Tables outside the project's database and the allowed system tables.
    ("select * from system.users", {}, "table system.users is refused"),
    ("select * from `system`.`processes`", {}, "table system.processes is refused"),
    ("select * from numbers(1) where 1 in (select 1 from system.grants)", {}, "system.grants"),
    ("select name from system.settings", {}, "table system.settings is refused"),
    ("select * from default.secrets", {}, "table default.secrets is refused"),
    ("describe table system.users", {}, "table system.users is refused"),
    ("exists table system.users", {}, "table system.users is refused"),
    ("show tables from system", {}, "only the database"),
    # Unicode quotes are quotes to ClickHouse's lexer; what hides inside is checked.
    ("select \u2018a\u2019 into outfile '{victim}'", {}, "INTO OUTFILE"),
    # Client-side substitution is refused: a value could escape its string.
    (
        "select * from {db}.decision_trace(event_id = %(id)s)",
        {"id": "x') union all select * from file('/etc/passwd"},
        "%(name)s substitution is refused",
    ),
    ("select 1", {"id": "x"}, "%(name)s substitution is refused"),
    ("select {{a:String}}", {"a": "x", "b": "y"}, "have no {name:Type} placeholder"),
    ("select {{a:String}}", {"bad name": "x"}, "is not an identifier"),
    # Empty and malformed.
    ("   ", {}, "empty"),
    ("select 'unterminated", {}, "cannot parse"),
]

# Analysts' statements that must keep working (``{db}`` substituted).
ALLOWED: list[tuple[str, dict[str, Any]]] = [
    ("select 1 -- a comment; with a quote '", {}),
    ("select /* ; drop table t */ 1", {}),
    # ClickHouse nests comments: all of this after the 1 is one comment, not a statement.
    ("select 1 /* /* */ ; drop table {db}.models -- */", {}),
    ("select ';' as semi, 'insert into x' as s, 'into outfile' as o", {}),
    ("with 2 as x select x", {}),
    ("(select 1) union all (select 2)", {}),
    ("select count() from {db}.predictions", {}),
    ("select count() from predictions", {}),  # unqualified: the project's database
    ("select * from numbers(3)", {}),
    ("select * from values('a UInt8', 1, 2)", {}),
    ("select name from system.tables where database = {{db:String}}", {"db": "{db}"}),
    ("show tables", {}),
    ("show databases", {}),
    ("show tables from {db}", {}),
    ("describe table {db}.predictions", {}),
    ("exists table {db}.models", {}),
    ("explain select count() from {db}.predictions", {}),
    ("explain ast select 1", {}),
    ("select * from {db}.decision_trace(event_id = {{id:String}})", {"id": "e1"}),
]


def fill(text: str, db: str, victim: str) -> str:
    return (
        text.replace("{db}", db).replace("{victim}", victim).replace("{{", "{").replace("}}", "}")
    )
