"""The feature registry: a Feast feature service as an ordered, typed ``FeatureServiceSpec``.

Entity features come from the Feast repo, whose schema and tags are built from the dbt
mart YAML; event-level features follow, in ``streams.features.event`` order. A layout
computed through Feast is cached under ``<home>/feast/layouts`` keyed by a digest of the
repo (``streams.features.layout_cache``), so a process started after the nightly run
never imports feast while the repo is unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streams.features.event import EVENT_FEATURE_SETS
from streams.features.layout_cache import (
    LAYOUT_FORMAT,
    layout_cache_path,
    layout_digest,
    read_cached,
    write_cached,
)
from streams.features.spec import FeatureServiceSpec, FeatureSpec
from streams.features.store import load_definitions

if TYPE_CHECKING:
    from streams.settings import Settings

__all__ = [
    "ServiceLayout",
    "ViewLayout",
    "cached_service_layout",
    "load_feature_service",
    "load_service_layout",
]

log = logging.getLogger(__name__)
_FEATURE_FIELDS = tuple(f.name for f in dataclasses.fields(FeatureSpec))


@dataclass(frozen=True, slots=True)
class ViewLayout:
    """One feature view of a service: its entity key, dbt mart and features in order."""

    name: str
    join_key: str
    model: str
    features: tuple[FeatureSpec, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        """The mart's column names (without the ``<view>__`` prefix)."""
        return tuple(f.name.split("__", 1)[1] for f in self.features)


@dataclass(frozen=True, slots=True)
class ServiceLayout:
    """Everything the training set and the online lookup need to follow a service."""

    spec: FeatureServiceSpec
    views: tuple[ViewLayout, ...]
    event_version: str

    @property
    def entity_features(self) -> tuple[FeatureSpec, ...]:
        return tuple(f for view in self.views for f in view.features)

    @property
    def event_features(self) -> tuple[FeatureSpec, ...]:
        return EVENT_FEATURE_SETS[self.event_version]


def load_feature_service(settings: Settings, name: str) -> FeatureServiceSpec:
    """The ordered features of feature service ``name``, with dtype, default and metadata."""
    return load_service_layout(settings, name).spec


def load_service_layout(settings: Settings, name: str) -> ServiceLayout:
    """``load_feature_service`` plus where each view's features live.

    Read from the layout cache when the Feast repo and its dbt YAML are unchanged since the
    layout was last computed; otherwise computed through Feast and written to the cache.
    """
    entry = _cache_entry(settings, name)
    if entry is None:
        return _layout_through_feast(settings, name)
    path, digest = entry
    cached = read_cached(path, lambda document: _from_document(document, name, digest))
    if cached is not None:
        return cached
    layout = _layout_through_feast(settings, name)
    write_cached(path, _document(layout, digest))
    return layout


def cached_service_layout(settings: Settings, name: str) -> ServiceLayout | None:
    """The cached layout of service ``name`` for the repo as it is now, or None; never
    imports feast."""
    entry = _cache_entry(settings, name)
    if entry is None:
        return None
    path, digest = entry
    return read_cached(path, lambda document: _from_document(document, name, digest))


def _cache_entry(settings: Settings, name: str) -> tuple[Path, str] | None:
    try:
        digest = layout_digest(settings, name)
    except OSError as exc:
        log.warning("cannot digest the Feast repo for the layout cache (%s); not caching", exc)
        return None
    path = layout_cache_path(settings, name, digest)
    return None if path is None else (path, digest)


def _assemble(name: str, views: tuple[ViewLayout, ...], event_version: str) -> ServiceLayout:
    # Event features are not cached: streams.features.event stays their one definition.
    all_features = tuple(f for v in views for f in v.features) + EVENT_FEATURE_SETS[event_version]
    return ServiceLayout(
        spec=FeatureServiceSpec(name=name, features=all_features),
        views=views,
        event_version=event_version,
    )


def _layout_through_feast(settings: Settings, name: str) -> ServiceLayout:
    definitions = load_definitions(settings.feature_repo_dir)
    service = definitions.feature_service(name)
    views: list[ViewLayout] = []
    for projection in service.feature_view_projections:
        view = definitions.feature_view(projection.name)
        features = tuple(
            FeatureSpec(
                name=f"{projection.name_to_use()}__{field.name}",
                dtype="float32",
                default=float(field.tags.get("default", 0.0)),
                owner=field.tags.get("owner", ""),
                sla=field.tags.get("sla", ""),
                drift_threshold=float(field.tags.get("drift_threshold", 0.2)),
            )
            for field in projection.features
        )
        views.append(
            ViewLayout(
                name=projection.name_to_use(),
                join_key=view.tags["join_key"],
                model=view.tags["dbt_model"],
                features=features,
            )
        )
    return _assemble(name, tuple(views), service.tags.get("event_features", "v1"))


def _document(layout: ServiceLayout, digest: str) -> dict[str, Any]:
    return {
        "format": LAYOUT_FORMAT,
        "service": layout.spec.name,
        "digest": digest,
        "event_version": layout.event_version,
        "views": [
            {
                "name": view.name,
                "join_key": view.join_key,
                "model": view.model,
                "features": [dataclasses.asdict(f) for f in view.features],
            }
            for view in layout.views
        ],
    }


def _field(document: Any, key: str, kind: type[Any]) -> Any:
    """``document[key]``, which must be of type ``kind`` (exactly: a bool is no number)."""
    value = document[key]
    if type(value) is not kind:
        raise TypeError(f"{key!r} is {type(value).__name__}, not {kind.__name__}")
    return value


def _feature(document: Any) -> FeatureSpec:
    if not isinstance(document, dict) or tuple(document) != _FEATURE_FIELDS:
        raise ValueError(f"a feature is not an object with keys {', '.join(_FEATURE_FIELDS)}")
    return FeatureSpec(
        name=_field(document, "name", str),
        dtype=_field(document, "dtype", str),
        default=_field(document, "default", float),
        owner=_field(document, "owner", str),
        sla=_field(document, "sla", str),
        drift_threshold=_field(document, "drift_threshold", float),
    )


def _view(document: Any) -> ViewLayout:
    if not isinstance(document, dict):
        raise TypeError("a view is not an object")
    return ViewLayout(
        name=_field(document, "name", str),
        join_key=_field(document, "join_key", str),
        model=_field(document, "model", str),
        features=tuple(_feature(f) for f in _field(document, "features", list)),
    )


def _from_document(document: Any, name: str, digest: str) -> ServiceLayout:
    """The layout a cache document holds; ValueError, KeyError or TypeError if it is not one."""
    if not isinstance(document, dict):
        raise TypeError("the document is not an object")
    found = (document.get("format"), document.get("service"), document.get("digest"))
    if found != (LAYOUT_FORMAT, name, digest):
        raise ValueError(
            f"format, service and digest are {found}, not ({LAYOUT_FORMAT}, {name!r}, {digest!r})"
        )
    views = tuple(_view(v) for v in _field(document, "views", list))
    return _assemble(name, views, _field(document, "event_version", str))
