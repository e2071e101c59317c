"""The layout cache: equal to the layout computed through Feast, keyed by every input's bytes,
and a scoring process that finds it never imports feast."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streams.features import dbt_meta, registry
from streams.features.event import EVENT_FEATURES_V1
from streams.features.layout_cache import layout_cache_path, layout_digest, layout_sources
from streams.features.registry import (
    ServiceLayout,
    ViewLayout,
    cached_service_layout,
    load_service_layout,
)
from streams.features.spec import FeatureServiceSpec, FeatureSpec
from streams.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SERVICE = "fraud_v1"


@pytest.fixture(autouse=True)
def _no_streamscore_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("STREAMSCORE_"):
            monkeypatch.delenv(key)


def _settings(root: Path, home: Path) -> Settings:
    return Settings(
        home=home, feature_repo_dir=root / "features", dbt_project_dir=root / "dbt_project"
    )


def _cache_file(settings: Settings) -> Path:
    path = layout_cache_path(settings, SERVICE, layout_digest(settings, SERVICE))
    assert path is not None
    return path


def test_the_cached_layout_equals_the_one_computed_through_feast(
    root: Path, tmp_path: Path
) -> None:
    settings = _settings(root, tmp_path)
    assert cached_service_layout(settings, SERVICE) is None  # so the next call goes to Feast
    through_feast = load_service_layout(settings, SERVICE)
    assert list((tmp_path / "feast" / "layouts").iterdir()) == [_cache_file(settings)]
    cached = cached_service_layout(settings, SERVICE)
    assert cached == through_feast
    assert load_service_layout(settings, SERVICE) == through_feast
    # The cache holds the entity views; event features come from streams.features.event.
    assert len(through_feast.views) == 3 and through_feast.event_features == EVENT_FEATURES_V1
    assert through_feast.spec.features[-len(EVENT_FEATURES_V1) :] == EVENT_FEATURES_V1


def test_floats_round_trip_exactly(tmp_path: Path) -> None:
    from streams.features.layout_cache import read_cached, write_cached
    from streams.features.registry import _document, _from_document

    tricky = (0.1 + 0.2, 5e-324, 1.7976931348623157e308, -0.0, 1 / 3, 2.0**-1074 * 3)
    view = ViewLayout(
        name="account",
        join_key="account_id",
        model="account_features",
        features=tuple(
            FeatureSpec(name=f"account__f{i}", default=value, drift_threshold=value / 7)
            for i, value in enumerate(tricky)
        ),
    )
    layout = ServiceLayout(
        spec=FeatureServiceSpec(name=SERVICE, features=view.features + EVENT_FEATURES_V1),
        views=(view,),
        event_version="v1",
    )
    path = tmp_path / "layout.json"
    write_cached(path, _document(layout, "ab" * 32))
    back = read_cached(path, lambda document: _from_document(document, SERVICE, "ab" * 32))
    assert back == layout
    assert back is not None
    assert [f.default.hex() for f in back.views[0].features] == [v.hex() for v in tricky]


def test_a_process_that_finds_the_cache_never_imports_feast(root: Path, tmp_path: Path) -> None:
    settings = _settings(root, tmp_path)
    expected = load_service_layout(settings, SERVICE)  # fills the cache, as the nightly run does
    # The scoring process's start-up: the score agent, every scoring module, the online
    # features (which load the layout).
    code = f"""
import pkgutil, sys
from pathlib import Path
import streams.agents.score, streams.scoring
for module in pkgutil.iter_modules(streams.scoring.__path__):
    __import__(f"streams.scoring.{{module.name}}")
from streams.features.online import OnlineFeatures
from streams.settings import Settings
root = Path({str(root)!r})
settings = Settings(
    home=Path({str(tmp_path)!r}),
    feature_repo_dir=root / "features",
    dbt_project_dir=root / "dbt_project",
)
online = OnlineFeatures(settings, {SERVICE!r}, latest_run=lambda: None)
loaded = sorted(m for m in sys.modules if m == "feast" or m.startswith("feast."))
assert not loaded, loaded
print(repr(online.layout))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == repr(expected)


def _copy_repo(root: Path, to: Path) -> Settings:
    ignore = shutil.ignore_patterns("__pycache__", "target", "logs")
    shutil.copytree(root / "features", to / "features", ignore=ignore)
    shutil.copytree(root / "dbt_project", to / "dbt_project", ignore=ignore)
    return _settings(to, to / "home")


def _flip_a_byte(path: Path) -> bytes:
    original = path.read_bytes()
    middle = len(original) // 2
    path.write_bytes(original[:middle] + bytes([original[middle] ^ 1]) + original[middle + 1 :])
    return original


@pytest.mark.parametrize(
    "relative",
    [
        "features/feature_views.py",
        "features/feature_services.py",
        "features/feature_store.yaml",
        "dbt_project/models/marts/card_features.yml",
        "dbt_project/models/staging/stg_transactions.yml",
    ],
)
def test_a_byte_changed_in_an_input_changes_the_digest(
    root: Path, tmp_path: Path, relative: str
) -> None:
    settings = _copy_repo(root, tmp_path)
    before = layout_digest(settings, SERVICE)
    original = _flip_a_byte(tmp_path / relative)
    assert layout_digest(settings, SERVICE) != before
    (tmp_path / relative).write_bytes(original)
    assert layout_digest(settings, SERVICE) == before


def test_the_digest_covers_what_the_layout_reads_and_nothing_else(
    root: Path, tmp_path: Path
) -> None:
    settings = _copy_repo(root, tmp_path)
    before = layout_digest(settings, SERVICE)
    digested = {path for _, path in layout_sources(settings)}
    # Every mart YAML that streams.features.dbt_meta.load_marts reads, every repo module.
    marts = (tmp_path / "dbt_project" / "models" / "marts").resolve()
    assert set(marts.glob("*.yml")) <= digested
    assert set((tmp_path / "features").resolve().glob("*.py")) <= digested
    # The library code that parses the YAML and shapes the layout.
    assert {Path(m.__file__).resolve() for m in (dbt_meta, registry)} <= digested
    # Neither documentation nor SQL shapes a layout.
    _flip_a_byte(tmp_path / "features" / "README.md")
    (tmp_path / "dbt_project" / "macros" / "x.sql").write_text("select 1\n")
    assert layout_digest(settings, SERVICE) == before
    assert layout_digest(settings, "fraud_v2") != before
    (tmp_path / "features" / "helpers.py").write_text("X = 1\n")  # a module the repo may import
    assert layout_digest(settings, SERVICE) != before


@pytest.mark.parametrize(
    "content",
    [
        b'{"format": 1, "service": "fraud_v1", "vi',  # cut short
        b"\xff\xfe not json",
        b'{"format": 1, "service": "fraud_v1", "views": []}',  # no digest
        b"[]",
    ],
)
def test_a_corrupt_cache_file_is_recomputed_and_rewritten(
    root: Path, tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(root, tmp_path)
    expected = load_service_layout(settings, SERVICE)
    path = _cache_file(settings)
    path.write_bytes(content)
    assert cached_service_layout(settings, SERVICE) is None
    with caplog.at_level(logging.WARNING, "streams.features.layout_cache"):
        assert load_service_layout(settings, SERVICE) == expected
    assert any("corrupt layout cache" in r.getMessage() for r in caplog.records)
    assert json.loads(path.read_bytes())["service"] == SERVICE
    assert cached_service_layout(settings, SERVICE) == expected


def test_a_cached_feature_of_the_wrong_type_is_ignored(root: Path, tmp_path: Path) -> None:
    settings = _settings(root, tmp_path)
    expected = load_service_layout(settings, SERVICE)
    path = _cache_file(settings)
    document = json.loads(path.read_bytes())
    document["views"][0]["features"][0]["default"] = "0.0"
    path.write_text(json.dumps(document))
    assert cached_service_layout(settings, SERVICE) is None
    assert load_service_layout(settings, SERVICE) == expected
    assert cached_service_layout(settings, SERVICE) == expected


def test_a_cache_that_cannot_be_written_is_a_warning(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "feast").write_text("a file where the cache folder would go\n")
    settings = _settings(root, tmp_path)
    with caplog.at_level(logging.WARNING, "streams.features.layout_cache"):
        layout = load_service_layout(settings, SERVICE)
    assert layout.spec.name == SERVICE and len(layout.views) == 3
    assert any("cannot write the layout cache" in r.getMessage() for r in caplog.records)
    assert cached_service_layout(settings, SERVICE) is None
