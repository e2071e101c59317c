"""Versioned, idempotent ClickHouse migrations: numbered ``.sql`` files next to this module.

Adding a table is adding ``NNNN_<what>.sql``. Each file is applied once, in order, and
recorded in ``schema_migrations`` with its checksum; a file that changed after it was
applied is an error (write a new migration instead). Statements are separated by ``;``
and may use ``{database}`` for the configured database, already quoted.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from streams.clickhouse.client import quote_identifier
from streams.errors import ConfigError, SinkError

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

_FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_LEDGER = """
create table if not exists {database}.schema_migrations (
    version UInt32,
    name String,
    checksum String,
    applied_at DateTime64(3, 'UTC') default now64(3)
) engine = ReplacingMergeTree
order by version
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered migration file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self, database: str) -> list[str]:
        rendered = self.sql.replace("{database}", database)
        return [s.strip() for s in rendered.split(";") if _has_sql(s)]


def _has_sql(text: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in text.splitlines())


def load_migrations() -> list[Migration]:
    """Every migration shipped with streamscore, by version; versions must be unique."""
    found: dict[int, Migration] = {}
    for entry in resources.files("streams.clickhouse").joinpath("migrations").iterdir():
        match = _FILENAME.match(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise ConfigError(
                f"two ClickHouse migrations share version {version:04d}: "
                f"{found[version].name} and {match.group(2)}"
            )
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def apply_migrations(
    client: Client, database: str, migrations: list[Migration] | None = None
) -> list[int]:
    """Apply the migrations ``database`` lacks, in order; return the versions applied now."""
    quoted = quote_identifier(database)
    pending = load_migrations() if migrations is None else migrations
    try:
        client.command(_LEDGER.format(database=quoted))
        rows = client.query(
            f"select version, argMax(checksum, applied_at) from {quoted}.schema_migrations "  # noqa: S608 - identifiers are checked/declared, values bound
            "group by version"
        ).result_rows
    except Exception as exc:
        raise SinkError(f"cannot read {database}.schema_migrations: {exc}") from exc
    applied = {int(version): str(checksum) for version, checksum in rows}
    done: list[int] = []
    for migration in pending:
        if migration.version in applied:
            if applied[migration.version] != migration.checksum:
                raise ConfigError(
                    f"ClickHouse migration {migration.version:04d}_{migration.name}.sql changed "
                    f"after it was applied to {database}; add a new migration instead"
                )
            continue
        try:
            for statement in migration.statements(quoted):
                client.command(statement)
            client.insert(
                f"{quoted}.schema_migrations",
                [[migration.version, migration.name, migration.checksum]],
                column_names=["version", "name", "checksum"],
            )
        except Exception as exc:
            raise SinkError(
                f"ClickHouse migration {migration.version:04d}_{migration.name} failed "
                f"on {database}: {exc}"
            ) from exc
        done.append(migration.version)
    return done
