"""OnlineFeatures on hand-written exports: defaults for unknown ids, atomic swap per run."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streams.errors import FeatureError
from streams.features.paths import export_path
from streams.features.runs import NightlyRun
from streams.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _write(settings: Settings, day: date, scale: float) -> None:
    from streams.features.registry import load_service_layout

    for view in load_service_layout(settings, "fraud_v1").views:
        ids = [f"{view.name[0]}1", f"{view.name[0]}2"]
        columns = {view.join_key: ids}
        for j, column in enumerate(view.columns):
            columns[column] = [scale * (j + 1), scale * (j + 1) + 0.5]
        path = export_path(settings, view.model, day)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), path)


def _run(run_id: str, day: date) -> NightlyRun:
    now = datetime.now(UTC)
    return NightlyRun(run_id, day, "fraud_v1", "success", now, now)


def test_lookup_defaults_missing_and_swap(tmp_path: Path) -> None:
    from streams.features.online import OnlineFeatures

    settings = Settings(home=tmp_path)
    day1, day2 = date(2024, 1, 1), date(2024, 1, 2)
    _write(settings, day1, 1.0)
    _write(settings, day2, 100.0)
    latest = [_run("r1", day1)]
    online = OnlineFeatures(settings, latest_run=lambda: latest[-1])
    with pytest.raises(FeatureError, match="no features loaded"):
        online.lookup(["a1"], ["c1"], ["m1"])
    assert online.refresh_if_newer() and not online.refresh_if_newer()

    values, missing = online.lookup(["a2", "zz"], ["c1", "c2"], ["nope", "m1"])
    n_account = sum(1 for n in online.entity_feature_names if n.startswith("account__"))
    assert values.dtype == np.float32 and values.shape == (2, len(online.entity_feature_names))
    assert values[0, 0] == 1.5 and values[0, 1] == 2.5  # a2's first features
    assert np.all(values[1, :n_account] == 0.0)  # unknown account: declared defaults
    assert missing.tolist() == [[False, False, True], [True, False, False]]

    latest.append(_run("r2", day2))
    assert online.refresh_if_newer() and online.feature_date == day2
    assert online.lookup(["a1"], ["c1"], ["m1"])[0][0, 0] == 100.0


def test_a_missing_export_is_named(tmp_path: Path) -> None:
    from streams.features.online import OnlineFeatures

    online = OnlineFeatures(Settings(home=tmp_path), latest_run=lambda: None)
    assert not online.refresh_if_newer()
    with pytest.raises(FeatureError, match="rerun `streamscore nightly --date`"):
        online.load(date(2024, 1, 1))
