"""What each successful nightly run served, kept read-only under its run id for replays.

The nightly job exports one Parquet file per feature view and feature date for Feast
(``paths.export_path``); a rerun or a backfill of a date overwrites that file, so the
values an older run served would be lost. Each run therefore also keeps the files of its
nightly date, byte for byte, under its own id::

    <home>/feast/runs/<run_id>/<model>.parquet   one per view, read-only
    <home>/feast/runs/<run_id>/manifest.json     run, service, date; sha256, rows, bytes per file

Guarantees: the manifest is written last (atomically), so a folder with one is complete;
no file is ever rewritten (a rerun has a new run id); :func:`verified_files` checks every
file's sha256 against the manifest, so the live worker and a replay that load a run by id
read the same bytes or fail naming the file. A failed run's folder is removed by the
nightly job; :func:`prune_run_exports` removes runs past the retention window
(``STREAMSCORE_FEATURE_RUN_RETENTION_DAYS``, rule in ``runs.runs_to_prune``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from streams.errors import FeatureError
from streams.features.paths import run_dir, run_export_path, runs_dir
from streams.features.runs import NightlyRun, runs_to_prune

if TYPE_CHECKING:
    from streams.settings import Settings

__all__ = [
    "KeptFile",
    "RunManifest",
    "discard_run_export",
    "keep_run_export",
    "kept_runs",
    "prune_run_exports",
    "read_manifest",
    "verified_files",
]

log = logging.getLogger("streams.features.run_exports")

MANIFEST = "manifest.json"


@dataclass(frozen=True, slots=True)
class KeptFile:
    """One view's file in a run's folder, as the manifest describes it."""

    name: str  # file name inside the run's folder
    sha256: str
    bytes: int


@dataclass(frozen=True, slots=True)
class RunManifest:
    """What run ``run_id`` served for ``nightly_date``: one file per mart (model name)."""

    run_id: str
    feature_service: str
    nightly_date: date
    kept_at: datetime
    files: Mapping[str, KeptFile]


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def keep_run_export(
    settings: Settings,
    run_id: str,
    nightly_date: date,
    feature_service: str,
    exports: Mapping[str, Path],
) -> RunManifest:
    """Copy ``exports`` (mart → the Parquet file this run just wrote for its nightly date)
    into the run's own folder, read-only, then write the manifest."""
    folder = run_dir(settings, run_id)
    if (folder / MANIFEST).exists():
        raise FeatureError(f"nightly run {run_id} already kept its features at {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, KeptFile] = {}
    for model, source in exports.items():
        target = run_export_path(settings, run_id, model)
        partial = target.with_suffix(".parquet.partial")
        shutil.copyfile(source, partial)
        os.chmod(partial, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        partial.replace(target)
        files[model] = KeptFile(target.name, _sha256(target), target.stat().st_size)
    manifest = RunManifest(run_id, feature_service, nightly_date, datetime.now(UTC), files)
    document = {
        "run_id": manifest.run_id,
        "feature_service": manifest.feature_service,
        "nightly_date": manifest.nightly_date.isoformat(),
        "kept_at": manifest.kept_at.isoformat(),
        "files": {
            model: {"name": f.name, "sha256": f.sha256, "bytes": f.bytes}
            for model, f in sorted(files.items())
        },
    }
    partial = folder / f"{MANIFEST}.partial"
    partial.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    partial.replace(folder / MANIFEST)  # atomic: the folder is complete from here on
    return manifest


def read_manifest(settings: Settings, run_id: str) -> RunManifest | None:
    """The manifest of run ``run_id``'s kept features; None if it kept none (pruned, or
    recorded before runs kept their exports). A malformed manifest is a FeatureError."""
    path = run_dir(settings, run_id) / MANIFEST
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        files = {
            str(model): KeptFile(str(f["name"]), str(f["sha256"]), int(f["bytes"]))
            for model, f in document["files"].items()
        }
        manifest = RunManifest(
            run_id=str(document["run_id"]),
            feature_service=str(document["feature_service"]),
            nightly_date=date.fromisoformat(document["nightly_date"]),
            kept_at=datetime.fromisoformat(document["kept_at"]),
            files=files,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FeatureError(
            f"the manifest of nightly run {run_id} at {path} is unreadable: {exc}"
        ) from exc
    if manifest.run_id != run_id:
        raise FeatureError(f"the manifest at {path} is run {manifest.run_id}'s, not {run_id}'s")
    return manifest


def verified_files(
    settings: Settings, manifest: RunManifest, models: Iterable[str]
) -> dict[str, Path]:
    """The kept file of each mart in ``models``, each checked against its sha256."""
    folder = run_dir(settings, manifest.run_id)
    out: dict[str, Path] = {}
    for model in models:
        kept = manifest.files.get(model)
        if kept is None:
            raise FeatureError(
                f"nightly run {manifest.run_id} kept no features for {model} (it kept "
                f"{sorted(manifest.files)}): the feature service changed since that run"
            )
        path = folder / kept.name
        if not path.is_file():
            raise FeatureError(f"the features of nightly run {manifest.run_id} lack {path}")
        digest = _sha256(path)
        if digest != kept.sha256:
            raise FeatureError(
                f"{path} changed after nightly run {manifest.run_id} kept it "
                f"(sha256 {digest[:12]}…, manifest {kept.sha256[:12]}…): refusing to serve it"
            )
        out[model] = path
    return out


def discard_run_export(settings: Settings, run_id: str) -> None:
    """Remove run ``run_id``'s folder (a failed run's, or a pruned one's)."""
    folder = run_dir(settings, run_id)
    if folder.exists():
        # The files are read-only; their folder is not, so removing them needs no chmod.
        shutil.rmtree(folder)


def kept_runs(settings: Settings) -> dict[str, date]:
    """Every run folder: run id → its nightly date (the folder's modification date, UTC,
    when it has no readable manifest: a run killed while exporting)."""
    root = runs_dir(settings)
    if not root.is_dir():
        return {}
    out: dict[str, date] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            run_dir(settings, folder.name)
        except FeatureError:
            continue  # not a run's folder: not ours to remove
        try:
            manifest = read_manifest(settings, folder.name)
        except FeatureError:
            manifest = None
        if manifest is not None:
            out[folder.name] = manifest.nightly_date
        else:
            out[folder.name] = datetime.fromtimestamp(folder.stat().st_mtime, UTC).date()
    return out


def prune_run_exports(
    settings: Settings, history: Iterable[NightlyRun], today: date | None = None
) -> list[str]:
    """Delete the run folders past the retention window (``runs.runs_to_prune``); their ids."""
    day = today or datetime.now(UTC).date()
    doomed = runs_to_prune(history, kept_runs(settings), day, settings.feature_run_retention_days)
    for run_id in doomed:
        discard_run_export(settings, run_id)
    if doomed:
        log.info("pruned the kept features of %d nightly runs: %s", len(doomed), doomed)
    return doomed
