"""From nothing to a servable pipeline: history → nightly features → trained, promoted model.

``streamscore demo`` and the end-to-end tests and benchmark start here. Each step is
the real one (the simulated history is written to the lake, dbt and Feast run, the
model trains on the point-in-time training set and is promoted in registry.yaml).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from streams.settings import Settings

Step = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class BootstrapConfig:
    """Sizes of the simulated world. The defaults are the demo's."""

    accounts: int = 5_000
    history_days: int = 90
    train_days: int = 14  # days of labelled events the model trains on
    label_lag_days: int = 7  # labels arrive late: the training window ends this long ago
    fraud_rate: float = 0.01
    seed: int = 7
    kind: str = "lightgbm"
    n_estimators: int = 200
    shadow_kind: str | None = None  # e.g. "mlp": trained too and promoted as a shadow


@dataclass(slots=True)
class BootstrapReport:
    today: date
    history_rows: int = 0
    nightly_run: str = ""
    champion: str = ""
    shadow: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    durations_s: dict[str, float] = field(default_factory=dict)


def bootstrap(
    settings: Settings,
    config: BootstrapConfig = BootstrapConfig(),
    *,
    today: date | None = None,
    step: Step = _quiet,
) -> BootstrapReport:
    """Write history, run nightly for ``today``, train and promote; ``step(name)`` per step."""
    from streams.features.registry import load_feature_service
    from streams.features.training import build_training_set
    from streams.nightly import run_nightly
    from streams.scoring.registry import edit_registry, promote, registry_path
    from streams.scoring.training import import_training_package
    from streams.settings import project_root
    from streams.simulate.history import write_history

    # Training code lives in the checkout's models/ package, artifacts in settings.models_dir.
    models = import_training_package(project_root() / "models")
    train, TrainConfig = models.train, models.TrainConfig

    day = today or datetime.now(UTC).date()
    report = BootstrapReport(day)
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        report.durations_s[name] = round(now - clock, 2)
        clock = now

    step(f"history: {config.history_days} days × {config.accounts:,} accounts")
    history = write_history(
        settings.lake_url,
        day - timedelta(days=1),
        days=config.history_days,
        accounts=config.accounts,
        seed=config.seed,
        fraud_rate=config.fraud_rate,
    )
    report.history_rows = int(history.rows.get("transaction", 0))
    lap("history")

    first = day - timedelta(days=config.train_days + config.label_lag_days)
    step(f"nightly: dbt build + feast materialise for {day} (features back to {first})")
    run = run_nightly(settings, day, start_date=first)
    report.nightly_run = run.run_id
    lap("nightly")

    step("train: point-in-time training set → ONNX")
    spec = load_feature_service(settings, settings.feature_service)
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    end = start + timedelta(days=config.train_days)
    table = build_training_set(settings, start, end)
    out = settings.models_dir / "artifacts"
    version = day.strftime("%Y%m%d")
    champion = train(
        spec,
        table,
        out,
        TrainConfig(kind=config.kind, version=version, n_estimators=config.n_estimators),
    )
    report.champion = champion.metadata.model_id
    report.metrics = dict(champion.metadata.metrics)
    shadow = None
    if config.shadow_kind:
        shadow = train(spec, table, out, TrainConfig(kind=config.shadow_kind, version=version))
        report.shadow = shadow.metadata.model_id
    lap("train")

    step(f"promote: {report.champion} champion" + (f", {report.shadow} shadow" if shadow else ""))
    with edit_registry(registry_path(settings.models_dir)) as box:
        if box[0].champion != report.champion:
            box[0] = promote(box[0], report.champion)
        if report.shadow and report.shadow not in box[0].model_ids:
            box[0] = promote(box[0], report.shadow, role="shadow")
    lap("promote")
    return report
