"""``streamscore bench``: benchmarks that print numbers (never asserted in tests)."""

from __future__ import annotations

import importlib

import click

# Benchmarks owned by other stages register here as "module:command".
_EXTERNAL = {
    "ingest": "streams.bench.ingest:ingest",
    "scorer": "streams.bench.scorer:scorer",
    "features": "streams.bench.features:features",
    "e2e": "streams.bench.e2e:e2e",
    "drift": "streams.bench.drift:drift",
    "nightly": "streams.bench.nightly:nightly",
}


class _BenchGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *_EXTERNAL])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _EXTERNAL:
            module, attribute = _EXTERNAL[cmd_name].split(":")
            try:
                command = getattr(importlib.import_module(module), attribute)
            except (ModuleNotFoundError, AttributeError):
                return None
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=_BenchGroup)
def bench() -> None:
    """Benchmarks. Each prints its numbers; run them on an otherwise idle machine."""
