-- In-stream drift. Workers write bin counts per (model, feature, event-time window,
-- valid-topic partition) when a window closes. The view sums partitions (several
-- workers may share a window) and compares with the training baseline.
create table if not exists {database}.drift_histograms (
    model_version LowCardinality(String),
    feature LowCardinality(String),          -- a feature name, or __score__
    feature_index Int16,                     -- model input column, -1 for the score
    window_start DateTime64(3, 'UTC'),
    window_seconds UInt32,
    partition UInt16,
    rows UInt64,
    missing UInt64,                          -- rows served from defaults (score: NaN)
    counts Array(UInt64),                    -- per baseline bin
    worker_id LowCardinality(String),
    flushed_at DateTime64(3, 'UTC')
) engine = ReplacingMergeTree(flushed_at)
partition by toYYYYMM(window_start)
order by (model_version, feature, window_start, partition);

-- The training baseline of every model served, from its ONNX sidecar.
create table if not exists {database}.drift_baselines (
    model_version String,
    feature String,
    feature_index Int16,
    edges Array(Float64),
    expected Array(Float64),
    threshold Float64,                       -- PSI alert threshold (0: reported, never alerts)
    loaded_at DateTime64(3, 'UTC') default now64(3)
) engine = ReplacingMergeTree(loaded_at)
order by (model_version, feature);

-- PSI, binned KS and Jensen-Shannon distance per window, model and feature. Proportions
-- are floored at 1e-4 and renormalised, as in streams/monitoring/drift.py. A window alerts
-- when PSI passes the feature's threshold and it holds at least 200 rows: below that the
-- sampling noise of a 10-bin PSI alone reaches 0.1-0.2 (about chi2(9)/n).
create view if not exists {database}.drift_stats as
with
    summed as (
        select model_version, feature, window_start, any(window_seconds) as window_seconds,
               sum(rows) as rows, sum(missing) as missing, sumForEach(counts) as counts
        from {database}.drift_histograms final
        group by model_version, feature, window_start
    ),
    joined as (
        select s.*, b.threshold as threshold,
               arrayMap(c -> greatest(c / greatest(arraySum(s.counts), 1), 1e-4), s.counts) as p0,
               arrayMap(e -> greatest(e, 1e-4), b.expected) as q0
        from summed as s
        inner join (select * from {database}.drift_baselines final) as b
            on s.model_version = b.model_version and s.feature = b.feature
    ),
    normalised as (
        select *, arrayMap(x -> x / arraySum(p0), p0) as p, arrayMap(x -> x / arraySum(q0), q0) as q
        from joined
    )
select
    window_start,
    window_seconds,
    model_version,
    feature,
    rows,
    missing / greatest(rows, 1) as missing_rate,
    arraySum(arrayMap((a, b) -> (a - b) * log(a / b), p, q)) as psi,
    arrayMax(arrayMap((a, b) -> abs(a - b), arrayCumSum(p), arrayCumSum(q))) as ks,
    sqrt(greatest(
        0.5 * arraySum(arrayMap((a, b) -> a * log2(a / ((a + b) / 2)), p, q))
        + 0.5 * arraySum(arrayMap((a, b) -> b * log2(b / ((a + b) / 2)), p, q)), 0)) as js_distance,
    threshold,
    toUInt8(threshold > 0 and rows >= 200 and psi > threshold) as alert
from normalised
