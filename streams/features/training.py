"""Point-in-time training sets: each transaction with the features of the nightly run before it.

Features at date D use only events strictly before D, so a transaction on day D joins the
rows with ``feature_date = D``: exactly what the online store served that day. Entity
features then event features, in feature-service order; unknown entities get defaults,
as online.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from streams.errors import FeatureError
from streams.features.event import ACCOUNT_MEAN_FEATURE, INPUT_COLUMNS, compute_event_features
from streams.features.paths import duckdb_path
from streams.features.registry import load_service_layout

if TYPE_CHECKING:
    from streams.settings import Settings

KEY_COLUMNS = ("event_id", "event_time", "is_fraud")


def build_training_set(settings: Settings, start: datetime, end: datetime) -> pa.Table:
    """Every transaction with ``start <= event_time < end``: ``event_id``, ``event_time``,
    ``is_fraud`` (int8: 1 if any label event says fraud), then the features of
    ``settings.feature_service`` in service order (float32).

    Raises FeatureError if a day in the range has no nightly features (backfill it first).
    """
    import duckdb

    layout = load_service_layout(settings, settings.feature_service)
    path = duckdb_path(settings)
    if not path.is_file():
        raise FeatureError(f"no feature database at {path}: run `streamscore nightly` first")
    start_utc, end_utc = _utc_naive(start), _utc_naive(end)
    if start_utc >= end_utc:
        raise FeatureError(f"training-set range is empty: start {start} is not before end {end}")

    selects = [f"t.{c}" for c in dict.fromkeys((*INPUT_COLUMNS, "event_id"))]
    joins: list[str] = []
    for i, view in enumerate(layout.views):
        alias = f"v{i}"
        selects += [f'{alias}."{c}" as "{view.name}__{c}"' for c in view.columns]
        joins.append(
            f"left join {view.model} as {alias} on {alias}.{view.join_key} = t.{view.join_key} "
            f"and {alias}.feature_date = t.event_date"
        )
    query = f"""
        with
        transactions as (
            select * from stg_transactions where event_time >= ? and event_time < ?
        ),
        fraud as (
            select distinct transaction_id from stg_labels where is_fraud
        )
        select {", ".join(selects)},
            cast(fraud.transaction_id is not null as tinyint) as is_fraud
        from transactions as t
        left join fraud on fraud.transaction_id = t.event_id
        {" ".join(joins)}
        order by t.event_time, t.event_id
    """  # noqa: S608 - identifiers are from the registry, values bound
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise FeatureError(f"cannot open {path} (is a nightly run writing it?): {exc}") from exc
    try:
        con.execute("set TimeZone = 'UTC'")
        _check_feature_dates(con, layout.views[0].model, start_utc, end_utc)
        raw = con.sql(query, params=[start_utc, end_utc]).to_arrow_table()
    except duckdb.Error as exc:
        raise FeatureError(f"training-set query on {path} failed: {exc}") from exc
    finally:
        con.close()

    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        "event_id": raw.column("event_id"),
        "event_time": raw.column("event_time").cast(pa.timestamp("us", tz="UTC")),
        "is_fraud": raw.column("is_fraud").cast(pa.int8()),
    }
    for feature in layout.entity_features:
        values = raw.column(feature.name).to_numpy(zero_copy_only=False)
        filled = np.where(np.isnan(values.astype(np.float64)), feature.default, values)
        columns[feature.name] = pa.array(filled.astype(np.float32))
    events = raw.select(list(INPUT_COLUMNS)).set_column(0, "event_time", columns["event_time"])
    event_matrix = compute_event_features(
        events, columns[ACCOUNT_MEAN_FEATURE].to_numpy(), layout.event_version
    )
    for j, feature in enumerate(layout.event_features):
        columns[feature.name] = pa.array(event_matrix[:, j])
    names = [*KEY_COLUMNS, *layout.spec.names]
    return pa.table([columns[n] for n in names], names=names)


def _utc_naive(moment: datetime) -> datetime:
    """The UTC wall clock stg_transactions uses (naive datetimes are taken as UTC)."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def _check_feature_dates(con: object, model: str, start: datetime, end: datetime) -> None:
    rows = con.execute(  # type: ignore[attr-defined]
        "select distinct t.event_date from stg_transactions as t "  # noqa: S608 - identifiers are checked/declared, values bound
        f"anti join (select distinct feature_date from {model}) as f "
        "on f.feature_date = t.event_date "
        "where t.event_time >= ? and t.event_time < ? order by 1",
        [start, end],
    ).fetchall()
    if rows:
        days = ", ".join(str(r[0]) for r in rows[:10])
        raise FeatureError(
            f"no nightly features for {len(rows)} day(s) with transactions in [{start}, {end}): "
            f"{days}; backfill with `streamscore nightly --start {rows[0][0]} --date {rows[-1][0]}`"
        )
