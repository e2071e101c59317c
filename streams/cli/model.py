"""``streamscore model``: train, list, verify, compare, promote, roll back and retire models."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Column, Table

from streams.errors import ModelError, StreamscoreError
from streams.features.spec import FeatureServiceSpec
from streams.settings import Settings

if TYPE_CHECKING:
    from streams.runtime.control import ModelsAction
    from streams.scoring.artifact import Artifact
    from streams.scoring.evidence import Query
    from streams.scoring.registry import RegistryConfig

# How often a scoring process polls the registry's mtime (streams.agents.score's
# RELOAD_EVERY_S, not imported: that module loads the whole scoring stack).
REGISTRY_POLL_S = 30


def _feature_function(module: str, name: str, purpose: str) -> Any:
    """A function from the feature side (another team's module), or a clear error."""
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module.startswith(exc.name):
            raise
    except AttributeError:
        pass
    raise click.ClickException(
        f"{module}.{name} is not available in this build, so {purpose} is not possible yet "
        f"(it comes with the Feast/dbt feature work)"
    )


def _spec_or_none(settings: Settings, console: Console) -> FeatureServiceSpec | None:
    try:
        load = _feature_function(
            "streams.features.registry", "load_feature_service", "checking feature order"
        )
    except click.ClickException as exc:
        console.print(f"[yellow]warning:[/] {exc.message}; checked sha256 and ONNX metadata only")
        return None
    spec: FeatureServiceSpec = load(settings, settings.feature_service)
    return spec


def _registry_file(settings: Settings) -> Path:
    from streams.scoring.registry import registry_path

    return registry_path(settings.models_dir)


def _broadcast(
    settings: Settings, action: ModelsAction, config: RegistryConfig, console: Console
) -> None:
    """Tell every worker process to reload now (the control topic), after the registry is
    written. The registry is the truth: if the broadcast fails the change stands, and a
    warning says when the processes pick it up anyway."""
    from rich.markup import escape

    from streams.redact import redact
    from streams.runtime.control import models_message, publish_control

    path = _registry_file(settings)
    # The warning quotes librdkafka's reason; its own log lines would repeat it on stderr.
    quiet = logging.getLogger("streams.cli.model.librdkafka")
    quiet.propagate = False
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    try:
        challengers = [c.model for c in config.challengers]
        message = models_message(action, config.champion, challengers, path)
        offset = publish_control(settings, message, logger=quiet)
    except (StreamscoreError, OSError) as exc:  # OSError: the registry could not be read back
        console.print(
            f"[yellow]warning:[/] {escape(redact(str(exc)))}. The {action} stands "
            f"({escape(str(path))} is written): worker processes pick it up within "
            f"{REGISTRY_POLL_S} s, when they next poll it.",
            soft_wrap=True,  # one line, unwrapped, for logs and greps
        )
        return
    console.print(f"broadcast to every worker process (control topic, offset {offset})")


@click.group()
def model() -> None:
    """Train, list, verify, compare, promote and roll back models (models/registry.yaml)."""


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@model.command()
@click.option("--feature-service", default=None, help="Default: STREAMSCORE_FEATURE_SERVICE.")
@click.option("--start", default=None, help="ISO date/time (UTC); default: 90 days before --end.")
@click.option("--end", default=None, help="ISO date/time (UTC); default: now.")
@click.option("--kind", type=click.Choice(["lightgbm", "mlp"]), default="lightgbm")
@click.option("--name", default=None, help="Default: fraud_<kind>.")
@click.option("--version", "version", default=None, help="Default: the next integer.")
@click.option("--seed", default=7, show_default=True, type=int)
@click.option("--threads", default=1, show_default=True, type=int)
@click.pass_obj
def train(
    settings: Settings,
    feature_service: str | None,
    start: str | None,
    end: str | None,
    kind: str,
    name: str | None,
    version: str | None,
    seed: int,
    threads: int,
) -> None:
    """Train a model on the point-in-time training set and write an ONNX artifact."""
    from datetime import timedelta

    from streams.scoring.training import import_training_package

    models = import_training_package(settings.models_dir)
    load_service = _feature_function(
        "streams.features.registry", "load_feature_service", "training"
    )
    build = _feature_function("streams.features.training", "build_training_set", "training")
    end_at = _parse_time(end) or datetime.now(UTC)
    start_at = _parse_time(start) or end_at - timedelta(days=90)
    service = feature_service or settings.feature_service
    # build_training_set follows settings.feature_service: point it at the requested one.
    settings = settings.model_copy(update={"feature_service": service})
    spec: FeatureServiceSpec = load_service(settings, service)
    table = build(settings, start_at, end_at)
    out_dir = settings.models_dir / "artifacts"
    model_name = name or f"fraud_{kind}"
    config = models.TrainConfig(
        kind=kind,
        name=model_name,
        version=version or models.next_version(out_dir, model_name),
        seed=seed,
        threads=threads,
    )
    result = models.train(spec, table, out_dir, config)
    meta = result.metadata
    click.echo(f"wrote {result.onnx_path} (+ .json sidecar, .md model card)")
    for key in ("roc_auc", "pr_auc", "recall_at_1pct_fpr", "onnx_parity_max_abs_diff"):
        if key in meta.metrics:
            click.echo(f"  {key}: {meta.metrics[key]:.4g}")
    click.echo(f"promote with: streamscore model promote {meta.model_id}")


@model.command("list")
@click.pass_obj
def list_(settings: Settings) -> None:
    """Artifacts in models/artifacts with their role in the registry."""
    from streams.scoring.metadata import ModelMetadata
    from streams.scoring.registry import load_registry

    config = load_registry(_registry_file(settings))
    roles = {
        c.model: f"{c.role}" + (f" {c.share:.0%}" if c.role == "canary" else "")
        for c in config.challengers
    }
    if config.champion:
        roles[config.champion] = "champion"
    # Ids and roles are what people copy into `promote`: never truncate them.
    table = Table(
        Column("model", no_wrap=True),
        Column("role", no_wrap=True),
        "kind",
        "features",
        "ROC AUC",
        "recall@1%FPR",
        "data to",
    )
    seen = set()
    for sidecar in sorted((settings.models_dir / "artifacts").glob("*.json")):
        try:
            meta = ModelMetadata.read(sidecar)
        except ModelError as exc:
            table.add_row(sidecar.stem, roles.get(sidecar.stem, ""), f"[red]{exc}[/]")
            continue
        seen.add(meta.model_id)
        m = meta.metrics
        table.add_row(
            meta.model_id,
            roles.get(meta.model_id, ""),
            meta.kind,
            meta.feature_service,
            f"{m['roc_auc']:.4f}" if "roc_auc" in m else "",
            f"{m['recall_at_1pct_fpr']:.3f}" if "recall_at_1pct_fpr" in m else "",
            str(meta.training_data.get("end", "?"))[:10],
        )
    for missing in sorted(set(roles) - seen):
        table.add_row(missing, roles[missing], "[red]artifact missing[/]")
    console = Console()
    console.print(table)
    if config.champion is None:
        console.print("no champion yet")


def _check_artifact(settings: Settings, model_id: str, console: Console) -> None:
    from streams.scoring.artifact import load_artifact
    from streams.scoring.registry import artifact_path

    load_artifact(artifact_path(settings.models_dir, model_id), _spec_or_none(settings, console))


def _comparison_query(settings: Settings) -> Query:
    """A ``streams.scoring.evidence.Query`` over ``streamscore sql``'s routing: direct, or
    through the worker's /sql endpoint while the worker holds chDB."""
    from streams.sql.route import execute

    def query(sql: str, parameters: Mapping[str, Any]) -> tuple[Sequence[str], list[list[Any]]]:
        output = execute(settings, sql, parameters, "json", 10_000)
        return output.columns, output.rows

    return query


@model.command()
@click.option("--challenger", default=None, help="Only this challenger's model id.")
@click.option(
    "--since", default=None, help="ISO date/time (UTC): compare events from then on; default all."
)
@click.pass_obj
def compare(settings: Settings, challenger: str | None, since: str | None) -> None:
    """Champion vs each challenger on the same events (the model_comparison view).

    Events compared, score mean/p50/p90, decision agreement and, once labels exist,
    precision, recall and ROC AUC of both on the labelled ones.
    """
    from streams.scoring.evidence import comparison_query, parse_comparisons

    sql, parameters = comparison_query(
        settings.clickhouse_database, since=_parse_time(since), challenger=challenger
    )
    columns, rows = _comparison_query(settings)(sql, parameters)
    found = parse_comparisons(columns, rows)
    console = Console()
    if not found:
        console.print(
            "no compared events: a challenger is compared once it scored events the live "
            "champion scored (shadow, canary, or `streamscore replay --model`)"
        )
        return

    def num(value: float | None, fmt: str = ".4f") -> str:
        return "" if value is None else format(value, fmt)

    table = Table(
        Column("champion", no_wrap=True),
        Column("challenger", no_wrap=True),
        "role",
        Column("events", justify="right"),
        Column("agree", justify="right"),
        Column("score mean/p50/p90 champion", justify="right"),
        Column("challenger", justify="right"),
        Column("labelled (fraud)", justify="right"),
        Column("AUC champion", justify="right"),
        Column("challenger", justify="right"),
        Column("precision", justify="right"),
        Column("recall", justify="right"),
    )
    for c in found:
        table.add_row(
            c.champion_version,
            c.challenger_version,
            c.challenger_roles,
            f"{c.events:,}",
            num(c.decision_agreement, ".1%"),
            f"{num(c.champion_score_mean, '.3f')}/{num(c.champion_score_p50, '.3f')}"
            f"/{num(c.champion_score_p90, '.3f')}",
            f"{num(c.challenger_score_mean, '.3f')}/{num(c.challenger_score_p50, '.3f')}"
            f"/{num(c.challenger_score_p90, '.3f')}",
            f"{c.labelled_events:,} ({c.positives:,})",
            num(c.champion_auc),
            num(c.challenger_auc),
            f"{num(c.champion_precision, '.1%')} → {num(c.challenger_precision, '.1%')}",
            f"{num(c.champion_recall, '.1%')} → {num(c.challenger_recall, '.1%')}",
        )
    console.print(table)


@model.command()
@click.argument("model_id")
@click.option("--shadow", is_flag=True, help="Add as shadow: scores every event, logged only.")
@click.option(
    "--canary",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=None,
    help="Add as canary deciding this share of events (0-1].",
)
@click.option(
    "--min-compared",
    type=click.IntRange(0),
    default=1000,
    show_default=True,
    help="Events a new champion must have been compared with the current one on.",
)
@click.option(
    "--force", is_flag=True, help="Promote to champion without (enough) comparison evidence."
)
@click.pass_obj
def promote(
    settings: Settings,
    model_id: str,
    shadow: bool,
    canary: float | None,
    min_compared: int,
    force: bool,
) -> None:
    """Make MODEL_ID champion (or a shadow/canary challenger) after checking its artifact.

    A new champion must have been compared with the current one on --min-compared events
    (model_comparison: as a shadow or canary, or replayed with `streamscore replay
    --model`); the evidence is printed. --force skips the check.
    """
    from streams.scoring.evidence import gather_evidence
    from streams.scoring.registry import edit_registry, load_registry
    from streams.scoring.registry import promote as promote_in

    if shadow and canary is not None:
        raise click.UsageError("--shadow and --canary are exclusive")
    console = Console()
    _check_artifact(settings, model_id, console)
    role = "shadow" if shadow else "canary" if canary is not None else "champion"
    current = load_registry(_registry_file(settings)).champion
    if role == "champion" and current != model_id:  # (promoting the champion fails below)
        evidence = gather_evidence(
            _comparison_query(settings),
            settings.clickhouse_database,
            model_id,
            current,
            min_compared,
            unavailable=StreamscoreError,
        )
        for line in evidence.lines():
            click.echo(line)  # unwrapped: the evidence is read and kept as text
        if not evidence.sufficient:
            if not force:
                raise click.ClickException(f"not promoted: {evidence.refusal()}")
            click.echo(f"--force: promoting anyway ({evidence.refusal()})")
    with edit_registry(_registry_file(settings)) as box:
        old = box[0]
        box[0] = promote_in(box[0], model_id, role=role, share=canary or 0.0)  # type: ignore[arg-type]
        new = box[0]
    if role == "champion":
        console.print(f"champion: {old.champion or '(none)'} → {model_id}")
    else:
        console.print(f"{model_id} added as {role}" + (f" ({canary:.0%})" if canary else ""))
    if new != old:  # (edit_registry wrote it)
        _broadcast(settings, "promote", new, console)


@model.command()
@click.pass_obj
def rollback(settings: Settings) -> None:
    """Restore the previous champion from the registry history."""
    from streams.scoring.registry import edit_registry
    from streams.scoring.registry import rollback as rollback_in

    console = Console()
    with edit_registry(_registry_file(settings)) as box:
        before = box[0].champion
        after = rollback_in(box[0])
        # Refuse to roll back onto an artifact that no longer loads.
        _check_artifact(settings, str(after.champion), console)
        box[0] = after
    console.print(f"champion: {before} → {after.champion}")
    _broadcast(settings, "rollback", after, console)


@model.command()
@click.argument("model_id")
@click.pass_obj
def retire(settings: Settings, model_id: str) -> None:
    """Remove a shadow or canary challenger."""
    from streams.scoring.registry import edit_registry
    from streams.scoring.registry import retire as retire_in

    with edit_registry(_registry_file(settings)) as box:
        box[0] = retire_in(box[0], model_id)
    click.echo(f"retired {model_id}")


@model.command()
@click.option(
    "--placement",
    "show_placement",
    is_flag=True,
    help="Also where each model's nodes run (the profile of its warm-up) and whether each "
    "variant's graph has a CUDA kernel for every operator.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object keyed by model id.")
@click.pass_obj
def verify(settings: Settings, show_placement: bool, as_json: bool) -> None:
    """Load every registered model as the worker would: hashes, features, session, warm-up.

    The sha256 of each .onnx and of every external data file it references is checked
    against its sidecar, and the session is built from the bytes that were checked.
    --placement adds the nodes per execution provider and their share of the node time
    (ONNX Runtime's session profile), and cuda_capable per variant, decided from the graph
    without a GPU; --json prints all of it as JSON.
    """
    import json

    from streams.scoring.artifact import load_artifact
    from streams.scoring.registry import artifact_path, load_registry
    from streams.scoring.scorer import Scorer

    console = Console(stderr=as_json)  # with --json, stdout holds the JSON alone
    config = load_registry(_registry_file(settings))
    if config.champion is None:
        console.print(f"no champion yet in {_registry_file(settings)}")
        if as_json:
            click.echo("{}")
        return
    spec = _spec_or_none(settings, console)
    failures = 0
    report: dict[str, dict[str, Any]] = {}
    roles = {config.champion: "champion", **{c.model: c.role for c in config.challengers}}
    for model_id, role in roles.items():
        try:
            artifact = load_artifact(artifact_path(settings.models_dir, model_id), spec)
            scorer = Scorer(
                artifact,
                providers=settings.providers,
                intra_op_threads=settings.intra_op_threads,
                gpu_crossover_rows=settings.gpu_crossover_rows,
            )
            variants = _variant_capability(artifact)
        except StreamscoreError as exc:
            failures += 1
            report[model_id] = {"role": role, "ok": False, "error": str(exc)}
            console.print(f"[red]FAIL[/] {model_id} ({role}): {exc}")
            continue
        placement = scorer.placement
        report[model_id] = {
            "role": role,
            "ok": True,
            "variant": scorer.variant,
            **placement.to_dict(),
            "variants": variants,
        }
        if as_json:
            continue
        console.print(f"[green]ok[/] {model_id} ({role}) on {scorer.provider}", soft_wrap=True)
        if show_placement:
            shares = ", ".join(
                f"{n} on {p} ({placement.share_by_provider.get(p, 0.0):.0%} of node time)"
                for p, n in sorted(placement.nodes_by_provider.items())
            )
            capable = ", ".join(
                f"{name} {'yes' if v['cuda_capable'] else 'no'}"
                + (
                    f" (no CUDA kernel for {', '.join(v['without_cuda_kernel'])})"
                    if v["without_cuda_kernel"]
                    else ""
                )
                for name, v in variants.items()
            )
            console.print(
                f"  variant {scorer.variant}: {shares or 'no node profiled'}", soft_wrap=True
            )
            console.print(f"  cuda_capable: {capable}", soft_wrap=True)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    if failures:
        raise ModelError(f"{failures} of {len(roles)} registered models failed to load")


def _variant_capability(artifact: Artifact) -> dict[str, dict[str, Any]]:
    """Per variant of ``artifact``: whether every operator of its graph has a CUDA kernel."""
    from streams.scoring.placement import cuda_kernel_gaps

    found: dict[str, dict[str, Any]] = {}
    for name in artifact.metadata.variant_names:
        gaps = cuda_kernel_gaps(artifact.for_variant(name).model_bytes)
        found[name] = {"cuda_capable": not gaps, "without_cuda_kernel": [str(g) for g in gaps]}
    return found
