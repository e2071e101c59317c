"""Find the ``models`` training package, which lives beside ``streams`` but is not installed.

The installed ``streamscore`` package holds only ``streams``; training code needs the
``train`` extra and sits in ``<repo>/models``. ``settings.models_dir`` points at that
folder, so its parent is put on ``sys.path`` when ``models`` is not importable already.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from streams.errors import ConfigError

__all__ = ["import_training_package"]


def import_training_package(models_dir: Path) -> ModuleType:
    """``import models`` (training and export), from ``models_dir`` if needed."""
    try:
        return importlib.import_module("models")
    except ModuleNotFoundError as exc:
        if exc.name != "models":
            raise ConfigError(
                f"the training package needs {exc.name!r}: install streamscore[train]"
            ) from exc
    if not (models_dir / "__init__.py").is_file():
        raise ConfigError(
            f"no training package at {models_dir} (STREAMSCORE_MODELS_DIR); "
            f"training runs from a streamscore source checkout"
        )
    sys.path.insert(0, str(models_dir.resolve().parent))
    try:
        return importlib.import_module("models")
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"the training package at {models_dir} needs {exc.name!r}: install streamscore[train]"
        ) from exc
