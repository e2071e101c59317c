"""Exactly-once writes of event batches into the lake, on a local path or any fsspec URL.

Protocol, per batch:

1. rows are split by UTC ``event_date``; each partition's rows go to a hidden temp file
   (``.tmp-…``) next to its final place and are renamed into
   ``<root>/<event_type>/event_date=YYYY-MM-DD/part-<digest>.parquet``. The digest is
   derived from the batch's source offset ranges, so rewriting the same batch replaces
   its files instead of adding duplicates;
2. only after every data file is in place, a manifest
   ``<root>/_manifests/<event_type>/<digest>.json`` (also temp + rename) records the
   files and the offsets ``(topic, partition, first, last)`` the batch covers. The
   manifest is the commit.

A restarted sink asks :meth:`LakeWriter.committed_offsets` where to resume. A crash
between steps 1 and 2 leaves data files without a manifest ("orphans"). If the sink
re-reads the same offsets into the same batch, the deterministic names overwrite them;
because batch boundaries after a restart need not match, the sink must also call
:meth:`LakeWriter.recover` once at start-up, which deletes every data file and temp
file no manifest names. One writer per event type at a time (``recover`` would delete a
concurrent writer's uncommitted files).

On object stores a rename is a copy, but each object write is itself atomic, so
readers never see a half-written file either way.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from streams.lake.exceptions import LakeError, LakeInputError
from streams.lake.schema import PARTITION_COLUMN, SCHEMAS, TIME_FIELDS, conform, event_dates

MANIFEST_DIR = "_manifests"
TEMP_PREFIX = ".tmp-"
# Temp files end in neither .parquet nor .json, so readers globbing the lake (dbt's
# read_parquet('.../*/*.parquet'), duckdb) never see a half-written file.
TEMP_SUFFIX = ".partial"


def _temp_path(final: str) -> str:
    name = f"{TEMP_PREFIX}{uuid.uuid4().hex}-{posixpath.basename(final)}{TEMP_SUFFIX}"
    return posixpath.join(posixpath.dirname(final), name)


MANIFEST_VERSION = 1

# (topic, partition, first_offset, last_offset), both offsets inclusive.
SourceRange = tuple[str, int, int, int]


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What one ``write_batch`` committed."""

    event_type: str
    batch_id: str
    rows: int
    files: tuple[str, ...]
    source: tuple[SourceRange, ...]


@dataclass(slots=True)
class RecoverReport:
    """Files ``recover`` deleted: uncommitted data files and leftover temp files."""

    orphans: list[str] = field(default_factory=list)
    temps: list[str] = field(default_factory=list)


def resolve_filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    """``root`` (a path, ``file://`` or any fsspec URL) → an Arrow filesystem and base path."""
    if "://" not in root or root.startswith("file://"):
        path = root.removeprefix("file://")
        # Arrow's local filesystem renames with rename(2): atomic, replaces the target.
        return pafs.LocalFileSystem(), os.path.abspath(path)
    import fsspec  # type: ignore[import-untyped]  # no stubs; pyproject is not ours to edit

    try:
        fs, path = fsspec.core.url_to_fs(root)
    except (ImportError, ValueError) as exc:
        raise LakeError(f"cannot open lake root {root!r}: {exc}") from exc
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), str(path).rstrip("/")


def batch_digest(source: Sequence[SourceRange]) -> str:
    """A stable name for the offset ranges of a batch (order of ranges does not matter)."""
    text = "|".join(f"{t}\x00{p}\x00{a}\x00{b}" for t, p, a, b in sorted(source))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _check_source(source: Iterable[SourceRange]) -> tuple[SourceRange, ...]:
    seen: set[tuple[str, int]] = set()
    out: list[SourceRange] = []
    for item in source:
        if len(item) != 4:
            raise LakeInputError(f"source ranges are (topic, partition, first, last), got {item!r}")
        topic, partition, first, last = item
        if not topic or partition < 0 or first < 0 or last < first:
            raise LakeInputError(
                f"bad source range {item!r}: need 0 <= first <= last, partition >= 0"
            )
        if (topic, partition) in seen:
            raise LakeInputError(f"source range for {topic}[{partition}] given twice in one batch")
        seen.add((topic, partition))
        out.append((str(topic), int(partition), int(first), int(last)))
    return tuple(sorted(out))


class LakeWriter:
    """Writes Arrow batches into ``<root>/<event_type>/event_date=…/`` with offset manifests."""

    def __init__(
        self, root: str, filesystem: pafs.FileSystem | None = None, compression: str = "zstd"
    ) -> None:
        if not root:
            raise LakeInputError("lake root is empty: give a path or an fsspec URL")
        if filesystem is None:
            self._fs, self._base = resolve_filesystem(root)
        else:
            self._fs, self._base = filesystem, root.rstrip("/")
        self.root = root
        self._compression = compression

    @property
    def filesystem(self) -> pafs.FileSystem:
        return self._fs

    def path(self, *parts: str) -> str:
        """A path under the lake root, in the filesystem's own form."""
        return posixpath.join(self._base, *parts)

    def write_batch(
        self,
        event_type: str,
        table: pa.Table,
        source: Sequence[SourceRange] = (),
        *,
        batch_id: str | None = None,
    ) -> BatchReport:
        """Write ``table`` (lake schema) partitioned by event date, then commit its manifest.

        ``source`` names the Kafka offset ranges the rows came from; it also names the
        files. Rows without a Kafka origin (simulated history, backfills) pass no source
        and a stable ``batch_id`` instead. An empty table with a source still commits
        the offsets (every record of the range went elsewhere, e.g. to the DLQ).
        """
        if event_type not in SCHEMAS:
            raise LakeInputError(
                f"the lake holds no event type {event_type!r}; known: {', '.join(sorted(SCHEMAS))}"
            )
        ranges = _check_source(source)
        if batch_id is None:
            if not ranges:
                raise LakeInputError("write_batch needs source offset ranges or a batch_id")
            batch_id = batch_digest(ranges)
        elif not batch_id or "/" in batch_id or batch_id.startswith("."):
            raise LakeInputError(f"batch_id {batch_id!r} must be a plain, non-hidden file name")
        table = conform(event_type, table)
        files: list[str] = []
        if table.num_rows:
            table = table.sort_by(TIME_FIELDS[event_type])
            dates = event_dates(event_type, table)
            for day in pc.unique(dates).to_pylist():
                part = table.filter(pc.equal(dates, pa.scalar(day, pa.date32())))
                relative = posixpath.join(
                    event_type, f"{PARTITION_COLUMN}={day.isoformat()}", f"part-{batch_id}.parquet"
                )
                self._write_parquet(part, relative)
                files.append(relative)
        manifest = {
            "version": MANIFEST_VERSION,
            "event_type": event_type,
            "batch_id": batch_id,
            "rows": table.num_rows,
            "files": files,
            "source": [
                {"topic": t, "partition": p, "first_offset": a, "last_offset": b}
                for t, p, a, b in ranges
            ],
            "committed_at": datetime.now(UTC).isoformat(),
        }
        self._write_atomically(
            posixpath.join(MANIFEST_DIR, event_type, f"{batch_id}.json"),
            orjson.dumps(manifest, option=orjson.OPT_INDENT_2),
        )
        return BatchReport(event_type, batch_id, table.num_rows, tuple(files), ranges)

    def manifests(self, event_type: str) -> list[dict[str, object]]:
        """Every committed manifest of ``event_type`` (parsed JSON), in name order."""
        folder = self.path(MANIFEST_DIR, event_type)
        out: list[dict[str, object]] = []
        for info in self._list(folder, recursive=False):
            if not info.base_name.endswith(".json") or info.base_name.startswith(TEMP_PREFIX):
                continue
            with self._fs.open_input_stream(info.path) as stream:
                raw = stream.read()
            try:
                document = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                # Manifests are renamed into place whole, so this is damage, not a crash.
                raise LakeError(f"lake manifest {info.path} is not JSON: {exc}") from exc
            out.append(document)
        return out

    def committed_offsets(self, event_type: str) -> dict[tuple[str, int], int]:
        """``(topic, partition) -> last committed offset``; resume each partition at +1."""
        committed: dict[tuple[str, int], int] = {}
        for manifest in self.manifests(event_type):
            for item in manifest.get("source", []):  # type: ignore[attr-defined]
                key = (str(item["topic"]), int(item["partition"]))
                committed[key] = max(committed.get(key, -1), int(item["last_offset"]))
        return committed

    def recover(self, event_type: str | None = None) -> RecoverReport:
        """Delete data files no manifest names (a crash before commit) and leftover temps.

        Call once when a sink starts, before it writes, with no other writer running.
        """
        report = RecoverReport()
        for kind in [event_type] if event_type else sorted(SCHEMAS):
            referenced = {
                self.path(str(name))
                for manifest in self.manifests(kind)
                for name in manifest.get("files", [])  # type: ignore[attr-defined]
            }
            for info in self._list(self.path(kind), recursive=True):
                if info.type != pafs.FileType.File:
                    continue
                if info.base_name.startswith(TEMP_PREFIX):
                    self._fs.delete_file(info.path)
                    report.temps.append(info.path)
                elif info.base_name.endswith(".parquet") and info.path not in referenced:
                    self._fs.delete_file(info.path)
                    report.orphans.append(info.path)
            for info in self._list(self.path(MANIFEST_DIR, kind), recursive=False):
                if info.base_name.startswith(TEMP_PREFIX):
                    self._fs.delete_file(info.path)
                    report.temps.append(info.path)
        return report

    def _list(self, folder: str, recursive: bool) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(folder, allow_not_found=True, recursive=recursive)
        try:
            return sorted(self._fs.get_file_info(selector), key=lambda i: i.path)
        except OSError as exc:
            raise LakeError(f"cannot list {folder} in the lake at {self.root}: {exc}") from exc

    def _write_parquet(self, table: pa.Table, relative: str) -> None:
        final = self.path(relative)
        temp = _temp_path(final)
        try:
            self._fs.create_dir(posixpath.dirname(final), recursive=True)
            pq.write_table(table, temp, filesystem=self._fs, compression=self._compression)
            self._fs.move(temp, final)
        except OSError as exc:
            raise LakeError(
                f"could not write {table.num_rows} rows to {final}: {exc}; offsets not committed"
            ) from exc

    def _write_atomically(self, relative: str, payload: bytes) -> None:
        final = self.path(relative)
        temp = _temp_path(final)
        try:
            self._fs.create_dir(posixpath.dirname(final), recursive=True)
            with self._fs.open_output_stream(temp) as stream:
                stream.write(payload)
            self._fs.move(temp, final)
        except OSError as exc:
            raise LakeError(
                f"could not commit manifest {final}: {exc}; offsets not committed"
            ) from exc
