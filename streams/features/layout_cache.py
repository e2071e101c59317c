"""A digest-keyed file cache of feature service layouts, so serving starts without Feast.

Importing feast costs seconds of a scoring process's start-up, yet serving only needs the
service's layout. The Feast repo stays the source of truth: a cache file is named for a
sha256 over every file the layout is computed from (the repo's code and config, the dbt
model YAML it reads its metadata from, the code that turns them into a layout), so an
edited file misses the cache and the layout is recomputed through Feast.

Guarantees: a file is written whole or not at all (temp file + ``os.replace``); a write
that fails (read-only home) or a cache file that does not decode costs one pass through
Feast and a warning, never the process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from streams.features.paths import feast_dir

if TYPE_CHECKING:
    from streams.settings import Settings

__all__ = [
    "LAYOUT_FORMAT",
    "layout_cache_path",
    "layout_digest",
    "layout_sources",
    "read_cached",
    "write_cached",
]

# Bump when the cached document's shape or meaning changes, so old files stop matching.
LAYOUT_FORMAT = 1
# The Feast repo reads its metadata from the dbt project next to it
# (features/data_sources.py); STREAMSCORE_DBT_PROJECT_DIR is digested too when it differs.
REPO_DBT_PROJECT = "dbt_project"
_REPO_SUFFIXES = (".py", ".yaml", ".yml")
_DBT_SUFFIXES = (".yml", ".yaml")
# Library code the repo or the registry runs to build the layout (dbt_meta parses the YAML).
_CODE = ("dbt_meta.py", "registry.py", "spec.py")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

log = logging.getLogger(__name__)
T = TypeVar("T")


def _files(folder: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    """Files under ``folder`` ending in ``suffixes``, skipping caches and hidden folders."""
    if not folder.is_dir():
        return
    for path in folder.rglob("*"):
        relative = path.relative_to(folder).parts
        if any(part.startswith(".") or part == "__pycache__" for part in relative):
            continue
        if path.suffix in suffixes and path.is_file():
            yield path


def layout_sources(settings: Settings) -> tuple[tuple[str, Path], ...]:
    """Every file a service layout depends on, as ``(label, path)`` in a stable order.

    The label is the file's path relative to its root, prefixed by the root's role, so a
    renamed or moved file changes the digest as an edited one does.
    """
    repo = Path(settings.feature_repo_dir).resolve()
    roots: list[tuple[str, Path, tuple[str, ...]]] = [("repo", repo, _REPO_SUFFIXES)]
    dbt_projects = [repo.parent / REPO_DBT_PROJECT]
    if Path(settings.dbt_project_dir).resolve() != dbt_projects[0]:
        dbt_projects.append(Path(settings.dbt_project_dir).resolve())
    for index, project in enumerate(dbt_projects):
        roots.append((f"dbt{index}", project / "models", _DBT_SUFFIXES))
    sources = [
        (f"{role}:{path.relative_to(root).as_posix()}", path)
        for role, root, suffixes in roots
        for path in _files(root, suffixes)
    ]
    here = Path(__file__).resolve().parent
    sources.extend((f"code:{name}", here / name) for name in _CODE)
    return tuple(sorted(sources))


def layout_digest(settings: Settings, name: str) -> str:
    """The sha256 (hex) of service ``name``'s layout inputs; OSError if one is unreadable."""
    digest = hashlib.sha256(f"streamscore-layout\0{LAYOUT_FORMAT}\0{name}\0".encode())
    for label, path in layout_sources(settings):
        content = path.read_bytes()
        # Length-prefixed, so no two file sets hash the same byte stream.
        digest.update(f"{label}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def layout_cache_path(settings: Settings, name: str, digest: str) -> Path | None:
    """``<home>/feast/layouts/<name>-<digest[:16]>.json``; None if ``name`` is no file name."""
    if not _SAFE_NAME.fullmatch(name):
        return None
    return feast_dir(settings) / "layouts" / f"{name}-{digest[:16]}.json"


def read_cached(path: Path, decode: Callable[[Any], T]) -> T | None:
    """``decode`` of the JSON document at ``path``; None if it is absent or does not decode.

    ``decode`` raises ValueError, KeyError or TypeError on a document of the wrong shape;
    such a file, like one that does not parse, is logged and ignored.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read the layout cache %s (%s); computing it through Feast", path, exc)
        return None
    try:
        return decode(json.loads(data))
    except (ValueError, KeyError, TypeError) as exc:
        log.warning(
            "ignoring the corrupt layout cache %s (%s: %s); computing it through Feast",
            path,
            type(exc).__name__,
            exc,
        )
        return None


def write_cached(path: Path, document: object) -> None:
    """Write ``document`` as JSON to ``path`` atomically; a failure is logged, not raised."""
    temp: str | None = None
    try:
        # json writes floats as repr(), which reads back as the same float; NaN is refused
        # (it would never compare equal after a round trip).
        payload = json.dumps(document, indent=1, allow_nan=False).encode() + b"\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
        temp = None
    except (OSError, ValueError) as exc:
        log.warning(
            "cannot write the layout cache %s (%s); the next start-up imports Feast again",
            path,
            exc,
        )
    finally:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)
