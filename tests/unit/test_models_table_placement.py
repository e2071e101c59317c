"""The models table's placement columns (migration 0009) on an in-process chDB: a scoring
process's ``rows`` message goes in the way the sink stage writes it, and a row written
before the migration reads the defaults. chDB hosts one data path per process: the
module's clients are closed at the end so that other tests can open theirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import synthetic_feature_service, train_synthetic
from streams.agents.score import MODEL_COLUMNS, model_rows
from streams.clickhouse.client import connect
from streams.clickhouse.gateway import ClickHouseGateway
from streams.clickhouse.migrations import apply_migrations, load_migrations
from streams.scoring import ModelSet, Scorer
from streams.scoring.providers import CPU
from streams.settings import Settings
from streams.sinks.scored import decode_rows, encode_rows


def test_models_rows_land_with_their_placement(
    chdb_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root: Path = tmp_path_factory.mktemp("models")
    trained = train_synthetic(root / "artifacts", "lightgbm", n_estimators=5)
    scorer = Scorer.load(trained.onnx_path, synthetic_feature_service(20), providers="cpu")
    settings = Settings(models_dir=root, worker_id="w-1")
    database = chdb_settings.clickhouse_database
    client = connect(chdb_settings)
    try:
        apply_migrations(client, database, [m for m in load_migrations() if m.version < 9])
        old = ClickHouseGateway(client, database)
        old.insert_columns(
            "models", [["legacy-1"], ["legacy"], [CPU]], ["model_version", "model_name", "provider"]
        )
        assert 9 in apply_migrations(client, database)
        # What the sink stage does with a scoring process's rows message.
        _headers, value = encode_rows(
            "models", MODEL_COLUMNS, model_rows(ModelSet(scorer), settings)
        )
        names, rows = decode_rows(value)
        old.insert_columns("models", list(zip(*rows, strict=True)), names)
        found = client.query(
            "select model_version, provider, nodes_by_provider, compute_share_by_provider, "
            f"cuda_capable, without_cuda_kernel from {database}.models final "
            "order by model_version"
        ).result_rows
    finally:
        client.close()
    by_version = {r[0]: r[1:] for r in found}
    provider, nodes, shares, capable, missing = by_version[scorer.model_id]
    assert provider == CPU
    assert nodes == {CPU: scorer.placement.compute_nodes} and nodes[CPU] > 0
    assert shares == {CPU: pytest.approx(1.0)}
    assert capable is False and missing == ["ai.onnx.ml:TreeEnsembleClassifier"]
    assert by_version["legacy-1"] == (CPU, {}, {}, False, [])
