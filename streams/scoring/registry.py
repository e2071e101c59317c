"""``models/registry.yaml``: which artifact is champion and which challengers run beside it.

Roles: the champion decides every event not routed to a canary; a ``shadow`` scores
every event and its output is only logged; a ``canary`` decides for ``share`` of the
traffic, chosen deterministically by a hash of the event id. ``promote`` and
``rollback`` rewrite the file atomically (temp file, fsync, rename) under a lock and
keep a history of replaced champions so rollback restores the previous one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streams.errors import ConfigError

__all__ = [
    "ChallengerEntry",
    "RegistryConfig",
    "artifact_path",
    "edit_registry",
    "load_registry",
    "promote",
    "registry_path",
    "retire",
    "rollback",
    "save_registry",
]

_MODEL_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.]*-[A-Za-z0-9_.]+$")
HISTORY_LIMIT = 20

_HEADER = """\
# Model registry, edited by `streamscore model promote|rollback|retire` (atomic rewrite).
# champion:    <name>-<version> of models/artifacts/<name>-<version>.onnx, or null
# challengers: [{model: <id>, role: shadow}] scores and logs only;
#              [{model: <id>, role: canary, share: 0.05}] decides 5% of events by event-id hash
# history:     champions replaced by promote, newest last; rollback pops the last one
"""


def _check_model_id(value: str) -> str:
    if not _MODEL_ID.match(value) or ".." in value:
        raise ValueError(
            f"model id {value!r} must be <name>-<version> made of letters, digits, '_', '.'"
        )
    return value


class ChallengerEntry(BaseModel):
    """A model running beside the champion."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    role: Literal["shadow", "canary"]
    share: float = Field(default=0.0, ge=0.0, le=1.0)

    _model_is_id = field_validator("model")(_check_model_id)

    @model_validator(mode="after")
    def _share_matches_role(self) -> ChallengerEntry:
        if self.role == "canary" and self.share <= 0.0:
            raise ValueError(f"canary {self.model} needs a share in (0, 1]")
        if self.role == "shadow" and self.share != 0.0:
            raise ValueError(f"shadow {self.model} takes no share (it decides nothing)")
        return self


class RegistryConfig(BaseModel):
    """The parsed registry file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    champion: str | None = None
    challengers: tuple[ChallengerEntry, ...] = ()
    history: tuple[str, ...] = ()

    @field_validator("champion")
    @classmethod
    def _champion_is_id(cls, value: str | None) -> str | None:
        return None if value is None else _check_model_id(value)

    @field_validator("history")
    @classmethod
    def _history_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_model_id(v) for v in value)

    @model_validator(mode="after")
    def _consistent(self) -> RegistryConfig:
        ids = [c.model for c in self.challengers]
        if len(set(ids)) != len(ids):
            raise ValueError(f"a challenger is listed twice: {ids}")
        if self.champion is not None and self.champion in ids:
            raise ValueError(f"{self.champion} is both champion and challenger")
        total = sum(c.share for c in self.challengers)
        if total > 1.0:
            raise ValueError(f"canary shares add up to {total:.3f} > 1")
        if self.challengers and self.champion is None:
            raise ValueError("challengers need a champion to compare against")
        return self

    @property
    def model_ids(self) -> tuple[str, ...]:
        """Champion first, then challengers: every model that must load to serve."""
        head = (self.champion,) if self.champion else ()
        return head + tuple(c.model for c in self.challengers)


def registry_path(models_dir: Path) -> Path:
    return models_dir / "registry.yaml"


def artifact_path(models_dir: Path, model_id: str) -> Path:
    """``<models_dir>/artifacts/<model_id>.onnx`` (ids cannot contain path separators)."""
    return models_dir / "artifacts" / f"{_check_model_id(model_id)}.onnx"


def load_registry(path: Path) -> RegistryConfig:
    """Parse ``registry.yaml``; a missing file is an empty registry (no champion yet)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return RegistryConfig()
    except OSError as exc:
        raise ConfigError(f"model registry {path} cannot be read: {exc}") from exc
    try:
        data = yaml.safe_load(text) or {}
        return RegistryConfig.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"model registry {path} is invalid: {exc}") from exc


def save_registry(path: Path, config: RegistryConfig) -> None:
    """Write ``config`` atomically: readers see the old file or the new one, never half."""
    body = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, default_flow_style=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(_HEADER + body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def edit_registry(path: Path) -> Iterator[list[RegistryConfig]]:
    """Lock, load, let the caller replace ``box[0]``, save if it changed.

    Usage: ``with edit_registry(p) as box: box[0] = promote(box[0], "m-2")``. The lock
    file serialises concurrent ``promote``/``rollback`` runs.
    """
    lock = path.with_name(f".{path.name}.lock")
    with open(lock, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            before = load_registry(path)
            box = [before]
            yield box
            if box[0] != before:
                save_registry(path, box[0])
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def promote(
    config: RegistryConfig,
    model_id: str,
    role: Literal["champion", "shadow", "canary"] = "champion",
    share: float = 0.0,
) -> RegistryConfig:
    """A new config with ``model_id`` in ``role``; a replaced champion goes to history."""
    _check_model_id(model_id)
    others = tuple(c for c in config.challengers if c.model != model_id)
    try:
        if role == "champion":
            if config.champion == model_id:
                raise ConfigError(f"{model_id} is already the champion")
            history = config.history
            if config.champion is not None:
                history = (*history, config.champion)[-HISTORY_LIMIT:]
            return RegistryConfig(champion=model_id, challengers=others, history=history)
        if config.champion == model_id:
            raise ConfigError(f"{model_id} is the champion; promote another model first")
        entry = ChallengerEntry(model=model_id, role=role, share=share)
        return RegistryConfig(
            champion=config.champion, challengers=(*others, entry), history=config.history
        )
    except ValidationError as exc:
        raise ConfigError(f"cannot make {model_id} {role}: {exc}") from exc


def rollback(config: RegistryConfig) -> RegistryConfig:
    """Restore the previous champion from history; the current one is dropped."""
    if not config.history:
        raise ConfigError(
            f"nothing to roll back to: champion is {config.champion!r} and history is empty"
        )
    previous = config.history[-1]
    challengers = tuple(c for c in config.challengers if c.model != previous)
    return RegistryConfig(champion=previous, challengers=challengers, history=config.history[:-1])


def retire(config: RegistryConfig, model_id: str) -> RegistryConfig:
    """Remove a challenger (shadow or canary)."""
    if model_id not in {c.model for c in config.challengers}:
        raise ConfigError(
            f"{model_id} is not a challenger (challengers: {[c.model for c in config.challengers]})"
        )
    return config.model_copy(
        update={"challengers": tuple(c for c in config.challengers if c.model != model_id)}
    )
