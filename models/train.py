"""Train a fraud classifier on a point-in-time training set and write a checked ONNX artifact.

``train(spec, table, out_dir, config)`` takes the FeatureServiceSpec and the training
table as arguments (what ``streams.features`` builds in production, synthetic data in
tests). It splits by time, fits, exports every variant to ONNX (LightGBM: ``trees`` and
``tensor``, see ``models.export``), checks each variant's ONNX/native parity on the holdout,
and writes ``<name>-<version>.onnx`` (the main variant), ``<name>-<version>.<variant>.onnx``
for each other one, ``.json`` (sidecar, hashing them all) and ``.md`` (model card).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from models import evaluate
from models.export import export_variants, stamp
from streams.errors import ModelError
from streams.features.spec import FeatureServiceSpec
from streams.scoring.artifact import artifact_hashes, sha256_of
from streams.scoring.metadata import (
    INPUT_NAME,
    OUTPUT_NAME,
    FeatureColumn,
    ModelMetadata,
    VariantFile,
    sidecar_path,
    variant_file_name,
)

MODEL_KINDS = ("lightgbm", "mlp")
LEADING_COLUMNS = ("event_id", "event_time", "is_fraud")
PARITY_TOLERANCE = 1e-5

ModelKind = Literal["lightgbm", "mlp"]


@dataclass(frozen=True)
class TrainConfig:
    """How to train; the same config on the same table gives a byte-identical artifact."""

    kind: ModelKind = "lightgbm"
    version: str = "1"
    name: str = ""  # default: fraud_<kind>
    seed: int = 7
    holdout_fraction: float = 0.2
    threads: int = 1
    # LightGBM
    n_estimators: int = 200
    num_leaves: int = 31
    learning_rate: float = 0.05
    # MLP
    hidden_layers: tuple[int, ...] = (64, 32)
    max_iter: int = 40
    histogram_bins: int = 10
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return self.name or f"fraud_{self.kind}"


@dataclass(frozen=True)
class TrainResult:
    onnx_path: Path
    sidecar_path: Path
    card_path: Path
    metadata: ModelMetadata
    parity_max_abs_diff: float  # the worst variant's
    model: Any  # the fitted native model (LGBMClassifier or sklearn Pipeline)
    # Each variant's file (the main one is onnx_path) and its max |ONNX - native| on the holdout.
    variant_paths: dict[str, Path] = field(default_factory=dict)
    variant_parity: dict[str, float] = field(default_factory=dict)


def next_version(out_dir: Path, name: str) -> str:
    """One more than the highest integer version of ``name`` in ``out_dir`` ("1" if none)."""
    pattern = re.compile(rf"^{re.escape(name)}-(\d+)\.onnx$")
    found = [
        int(m.group(1)) for p in out_dir.glob(f"{name}-*.onnx") if (m := pattern.match(p.name))
    ]
    return str(max(found, default=0) + 1)


def feature_matrix(table: pa.Table, spec: FeatureServiceSpec) -> NDArray[np.float32]:
    """Columns in spec order as float32, nulls and NaN replaced by each feature's default.

    The Scorer applies the same defaults at serving time, so train and serve agree.
    """
    columns = []
    for feature in spec.features:
        col = pc.cast(table.column(feature.name), pa.float32())
        values = col.fill_null(feature.default).to_numpy()
        columns.append(np.where(np.isnan(values), np.float32(feature.default), values))
    return np.column_stack(columns).astype(np.float32, copy=False)


def check_table(table: pa.Table, spec: FeatureServiceSpec) -> None:
    expected = [*LEADING_COLUMNS, *spec.names]
    found = table.column_names
    if found != expected:
        for i, (want, have) in enumerate(zip(expected, found, strict=False)):
            if want != have:
                raise ModelError(
                    f"training table column {i}: expected {want!r}, found {have!r} "
                    f"(feature service {spec.name!r} has {len(spec.features)} features)"
                )
        raise ModelError(
            f"training table has {len(found)} columns, expected {len(expected)} "
            f"(event_id, event_time, is_fraud + {len(spec.features)} features of {spec.name!r})"
        )
    if table.num_rows == 0:
        raise ModelError("training table is empty")


def time_split(times: NDArray[Any], holdout_fraction: float) -> tuple[NDArray[np.bool_], Any]:
    """Train on events before a cut time, hold out everything at or after it (no overlap)."""
    cut = np.quantile(times.astype("datetime64[us]").astype(np.int64), 1 - holdout_fraction)
    cut_time = np.int64(cut).astype("datetime64[us]")
    train_mask = times.astype("datetime64[us]") < cut_time
    return train_mask, cut_time


def _fit(config: TrainConfig, x: NDArray[np.float32], y: NDArray[np.int8]) -> Any:
    if config.kind == "lightgbm":
        import lightgbm as lgb

        model = lgb.LGBMClassifier(
            n_estimators=config.n_estimators,
            num_leaves=config.num_leaves,
            learning_rate=config.learning_rate,
            random_state=config.seed,
            n_jobs=config.threads,
            deterministic=True,
            force_row_wise=True,
            verbose=-1,
            **config.extra,
        )
        return model.fit(x, y)
    if config.kind == "mlp":
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        # Scaling lives in the pipeline, so the exported graph scales too.
        pipeline = Pipeline(
            [
                ("scale", StandardScaler()),
                (
                    "mlp",
                    MLPClassifier(
                        hidden_layer_sizes=config.hidden_layers,
                        max_iter=config.max_iter,
                        early_stopping=True,
                        random_state=config.seed,
                        **config.extra,
                    ),
                ),
            ]
        )
        with warnings.catch_warnings():
            # Early stopping or max_iter ends training on purpose; the card records n_iter.
            warnings.simplefilter("ignore", ConvergenceWarning)
            return pipeline.fit(x, y)
    raise ModelError(f"unknown model kind {config.kind!r}; expected one of {MODEL_KINDS}")


def _onnx_scores(model_bytes: bytes, x: NDArray[np.float32]) -> NDArray[np.float32]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], dtype=np.float32)


def train(
    spec: FeatureServiceSpec, table: pa.Table, out_dir: Path, config: TrainConfig
) -> TrainResult:
    """Fit, export, check parity, evaluate on the time holdout and write the artifact."""
    check_table(table, spec)
    x = feature_matrix(table, spec)
    y = table.column("is_fraud").to_numpy(zero_copy_only=False).astype(np.int8)
    times = table.column("event_time").to_numpy()
    train_mask, cut_time = time_split(times, config.holdout_fraction)
    hold_mask = ~train_mask
    for part, mask in (("train", train_mask), ("holdout", hold_mask)):
        if len(np.unique(y[mask])) < 2:
            raise ModelError(
                f"the {part} split ({int(mask.sum())} rows, cut at {cut_time}) needs both "
                f"fraud and legitimate events"
            )
    model = _fit(config, x[train_mask], y[train_mask])
    n_features = len(spec.features)
    name, version = config.model_name, config.version
    variants = [
        (
            variant,
            stamp(
                onx,
                name=name,
                version=version,
                feature_service=spec.name,
                n_features=n_features,
                variant=variant,
            ),
        )
        for variant, onx in export_variants(config.kind, model, n_features)
    ]
    x_hold, y_hold = x[hold_mask], y[hold_mask]
    native_hold = model.predict_proba(x_hold)[:, 1]
    scores = {variant: _onnx_scores(data, x_hold) for variant, data in variants}
    parity = {v: float(np.abs(o.astype(np.float64) - native_hold).max()) for v, o in scores.items()}
    for variant, diff in parity.items():
        if diff > PARITY_TOLERANCE:
            raise ModelError(
                f"ONNX export of {name}-{version} (variant {variant!r}) disagrees with the "
                f"native model on the holdout: max |diff| {diff:.3g} > {PARITY_TOLERANCE}"
            )
    main_variant, model_bytes = variants[0]
    onnx_hold = scores[main_variant]
    scores_metrics = evaluate.metrics(y_hold, onnx_hold)
    scores_metrics["onnx_parity_max_abs_diff"] = parity[main_variant]
    for variant, _ in variants[1:]:
        scores_metrics[f"onnx_parity_max_abs_diff_{variant}"] = parity[variant]
    x_train = x[train_mask]
    meta = ModelMetadata(
        name=name,
        version=version,
        kind=config.kind,
        feature_service=spec.name,
        features=tuple(FeatureColumn(f.name, f.dtype, f.default) for f in spec.features),
        thresholds=evaluate.thresholds(y_hold, onnx_hold),
        onnx_sha256="",  # filled in from the files once they are written
        metrics=scores_metrics,
        training_data={
            "start": _utc(times.min()),
            "end": _utc(times.max()),
            "holdout_from": _utc(cut_time),
            "train_rows": int(train_mask.sum()),
            "holdout_rows": int(hold_mask.sum()),
            "fraud_rate": float(y.mean()),
        },
        feature_baselines={
            f.name: evaluate.histogram(x_train[:, j], config.histogram_bins)
            for j, f in enumerate(spec.features)
        },
        score_baseline=evaluate.histogram(onnx_hold, config.histogram_bins),
        params=_params(config, model),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    # Other variants first, the main file next, the sidecar (which hashes them all) last.
    variant_paths: dict[str, Path] = {}
    variant_files: dict[str, VariantFile] = {}
    for variant, data in variants[1:]:
        path = out_dir / variant_file_name(meta.model_id, variant)
        path.write_bytes(data)
        variant_files[variant] = VariantFile(path.name, _written_sha256(path, data))
        variant_paths[variant] = path
    onnx_path = out_dir / f"{meta.model_id}.onnx"
    onnx_path.write_bytes(model_bytes)
    variant_paths = {main_variant: onnx_path, **variant_paths}
    # The sidecar hashes every file the loader will read, as it lies on disk: the model
    # and each external data file it references (none today: stamp() inlines every tensor).
    onnx_sha256, external_data = artifact_hashes(onnx_path)
    if onnx_sha256 != sha256_of(model_bytes):
        raise ModelError(
            f"{onnx_path} changed while it was written: sha256 expected "
            f"{sha256_of(model_bytes)} (the exported model), found {onnx_sha256}"
        )
    meta = replace(
        meta,
        onnx_sha256=onnx_sha256,
        external_data=external_data,
        main_variant=main_variant,
        variants=variant_files,
    )
    meta.write(sidecar_path(onnx_path))
    card = onnx_path.with_suffix(".md")
    card.write_text(model_card(meta))
    return TrainResult(
        onnx_path,
        sidecar_path(onnx_path),
        card,
        meta,
        max(parity.values()),
        model,
        variant_paths,
        parity,
    )


def _written_sha256(path: Path, data: bytes) -> str:
    """The sha256 of ``path`` as it lies on disk, which must be that of ``data``."""
    found = sha256_of(path.read_bytes())
    if found != sha256_of(data):
        raise ModelError(
            f"{path} changed while it was written: sha256 expected {sha256_of(data)} "
            f"(the exported model), found {found}"
        )
    return found


def _params(config: TrainConfig, model: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"seed": config.seed, "threads": config.threads, **config.extra}
    if config.kind == "mlp":
        params["hidden_layers"] = list(config.hidden_layers)
        params["max_iter"] = config.max_iter
        params["n_iter"] = int(model.named_steps["mlp"].n_iter_)
    else:
        params["n_estimators"] = config.n_estimators
        params["num_leaves"] = config.num_leaves
        params["learning_rate"] = config.learning_rate
    return params


def _utc(value: Any) -> str:
    return f"{np.datetime_as_string(np.datetime64(value, 's'))}Z"


def model_card(meta: ModelMetadata) -> str:
    """A short markdown card: what, on which data, how good, how it decides, limits."""
    m, t, d = meta.metrics, meta.thresholds, meta.training_data

    def fmt(key: str) -> str:
        return f"{m[key]:.4f}" if key in m else "n/a"

    external = "".join(
        f"\n  + external data `{location}`, sha256 `{digest}`"
        for location, digest in sorted(meta.external_data.items())
    )
    variants = "".join(
        f"\n- **Variant `{variant}`:** `{file.file}`, sha256 `{file.sha256}` (ONNX vs "
        f"native max abs diff {m.get(f'onnx_parity_max_abs_diff_{variant}', math.nan):.2e})"
        for variant, file in sorted(meta.variants.items())
    )
    artifact = f"`{meta.model_id}.onnx` (variant `{meta.main_variant}`)"

    return f"""# Model card: {meta.model_id}

- **Kind:** {meta.kind} ({", ".join(f"{k}={v}" for k, v in sorted(meta.params.items()))})
- **Feature service:** `{meta.feature_service}` ({len(meta.features)} features, order fixed)
- **Artifact:** {artifact}, sha256 `{meta.onnx_sha256}`{external}{variants}
- **Input / output:** `{INPUT_NAME}` float32 [N, {len(meta.features)}] → `{OUTPUT_NAME}` float32 [N]
  (fraud probability); missing values take each feature's declared default.

## Data
Point-in-time training set from {d.get("start")} to {d.get("end")}, fraud rate
{d.get("fraud_rate", 0):.4f}. Time-based holdout: events from {d.get("holdout_from")} on
({d.get("holdout_rows")} rows); trained on the {d.get("train_rows")} earlier rows.

## Holdout metrics
| metric | value |
|---|---|
| ROC AUC | {fmt("roc_auc")} |
| PR AUC (average precision) | {fmt("pr_auc")} |
| Recall at 1% FPR | {fmt("recall_at_1pct_fpr")} |
| Holdout positives | {int(m.get("holdout_positives", 0))} |
| ONNX vs native max abs diff | {m.get("onnx_parity_max_abs_diff", float("nan")):.2e} |

## Decisions
- approve below {t.review:.6f} (1% FPR on holdout legitimate traffic);
  review from {t.review:.6f}; decline at or above {t.decline:.6f} (0.1% FPR).
- Low-confidence band [{t.low_confidence_low:.6f}, {t.low_confidence_high:.6f}): routed to
  human review.

## Intended use and limits
Real-time card-fraud scoring inside streamscore; decisions above are a starting point to
be tuned against review capacity. The thresholds come from one holdout window and drift
with fraud patterns: monitor the score and feature baselines in the sidecar. Not for
credit decisions or anything beyond transaction risk.
"""
