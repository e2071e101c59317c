"""Train on a real point-in-time training set (simulated lake → dbt → Feast) and serve it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streams.settings import Settings
from tests.integration.conftest import FEAST_STACK_MARKS

pytestmark = FEAST_STACK_MARKS

END = date(2024, 3, 1)
DAYS = 6  # nightly feature dates to build; the training set spans them


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from streams.clickhouse import connect
    from streams.features.registry import load_feature_service
    from streams.features.training import build_training_set
    from streams.nightly import run_nightly
    from streams.simulate.history import write_history

    root = tmp_path_factory.mktemp("models-it")
    lake = root / "lake"
    write_history(str(lake), END, days=100, accounts=1500, seed=5, fraud_rate=0.1)
    settings = Settings(
        home=root / "home",
        lake_dir=str(lake),
        clickhouse_dsn=f"chdb://{root / 'chdb'}",
        models_dir=root / "models",
        providers="cpu",
    )
    client = connect(settings)
    first = END - timedelta(days=DAYS)
    run_nightly(settings, END - timedelta(days=1), start_date=first, client=client)
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    table = build_training_set(settings, start, start + timedelta(days=DAYS))
    spec = load_feature_service(settings, settings.feature_service)
    yield {"settings": settings, "table": table, "spec": spec}
    client.close()
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("kind", ["lightgbm", "mlp"])
def test_train_export_and_serve_on_the_real_feature_service(
    world: dict[str, Any], kind: str
) -> None:
    from models import TrainConfig, train
    from models.train import feature_matrix
    from streams.scoring import Scorer

    settings, table, spec = world["settings"], world["table"], world["spec"]
    out: Path = settings.models_dir / "artifacts"
    config = TrainConfig(kind=kind, n_estimators=50, max_iter=10)  # type: ignore[arg-type]
    result = train(spec, table, out, config)
    assert result.metadata.feature_names == spec.names
    assert result.parity_max_abs_diff <= 1e-5
    scorer = Scorer.load(result.onnx_path, spec, providers="cpu")
    x = feature_matrix(table, spec)[:256]
    native = result.model.predict_proba(x)[:, 1]
    assert np.abs(scorer.score(x) - native).max() <= 1e-5
