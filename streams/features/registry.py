"""The feature registry: a Feast feature service as an ordered, typed ``FeatureServiceSpec``.

Entity features come from the Feast repo, whose schema and tags are built from the dbt
mart YAML; event-level features follow, in ``streams.features.event`` order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from streams.features.event import EVENT_FEATURE_SETS
from streams.features.spec import FeatureServiceSpec, FeatureSpec
from streams.features.store import load_definitions

if TYPE_CHECKING:
    from streams.settings import Settings


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
    """``load_feature_service`` plus where each view's features live."""
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
    event_version = service.tags.get("event_features", "v1")
    all_features = tuple(f for v in views for f in v.features) + EVENT_FEATURE_SETS[event_version]
    return ServiceLayout(
        spec=FeatureServiceSpec(name=name, features=all_features),
        views=tuple(views),
        event_version=event_version,
    )
