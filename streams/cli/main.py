"""``streamscore``: the one entry point. Subcommands load lazily so ``--help`` stays fast.

Each subcommand lives in its own module under ``streams.cli`` and exposes a click
command or group; add it to ``COMMANDS`` below. Settings are built here, once, and
passed down through the click context.
"""

from __future__ import annotations

import importlib
import sys

import click

from streams.errors import StreamscoreError

# name -> "module:attribute" of a click.Command. Loaded only when used or listed.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("streams.cli.demo:demo", "The main job end to end on local defaults."),
    "infra": (
        "streams.cli.infra:infra",
        "Start, stop and inspect the local Kafka broker (and Redis).",
    ),
    "topics": ("streams.cli.topics:topics", "Declared topics: apply and report drift."),
    "produce": ("streams.cli.produce:produce", "Validate and publish events from a file or stdin."),
    "simulate": ("streams.cli.simulate:simulate", "Generate realistic card transactions."),
    "worker": ("streams.cli.worker:worker", "Run the faust worker (ingestion and scoring agents)."),
    "bench": ("streams.cli.bench:bench", "Benchmarks that print numbers."),
    "schemas": ("streams.cli.schemas:schemas", "List and check the event schemas."),
    "nightly": ("streams.cli.nightly:nightly", "dbt build, feast apply, materialise, record."),
    "features": (
        "streams.cli.features:features",
        "Feature registry and point-in-time training sets.",
    ),
    "model": ("streams.cli.model:model", "Train, list, verify, promote and roll back models."),
    "db": ("streams.cli.db:db", "ClickHouse: apply migrations, list tables and views."),
    "sql": (
        "streams.cli.sql:sql",
        "Read-only SQL against ClickHouse (through the worker on chDB).",
    ),
    "replay": ("streams.cli.replay:replay", "Re-score a range of offsets or times, no duplicates."),
    "dlq": ("streams.cli.dlq:dlq", "Inspect and re-drive dead letters."),
    "status": ("streams.cli.status:status", "Consumer lag, throughput, last nightly run."),
    "report": ("streams.cli.report:report", "A self-contained HTML report from ClickHouse."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module_name, attribute = spec[0].split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            return _not_built(cmd_name, spec[1])
        command = getattr(module, attribute)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing must not import every subcommand (faust, feast, dbt are slow to import).
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in sorted(COMMANDS)])


def _not_built(name: str, help_text: str) -> click.Command:
    @click.command(name=name, help=f"{help_text} (not available in this build)")
    def missing() -> None:
        raise click.ClickException(f"'streamscore {name}' is not available in this build")

    return missing


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="streamscore")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """streamscore: real-time ML scoring on Kafka, Feast and ONNX Runtime, into ClickHouse.

    Settings come from STREAMSCORE_* environment variables, read once here.
    """
    from streams.settings import Settings

    try:
        ctx.obj = Settings()
    except Exception as exc:  # pydantic.ValidationError: show it as a usage problem
        raise click.ClickException(f"invalid STREAMSCORE_* settings: {exc}") from exc


def main() -> None:
    """Console-script entry point: StreamscoreError becomes a clear message and exit code 1."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except StreamscoreError as exc:
        from streams.redact import redact  # the last stop of every message: no password

        click.secho(f"error: {redact(str(exc))}", fg="red", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
