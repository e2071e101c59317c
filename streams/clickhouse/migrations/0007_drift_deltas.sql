-- Drift counts as deltas. Each scored batch adds bin counts per (model, feature,
-- event-time window, valid-topic partition), tagged with the source coordinates it
-- covered (source = the valid topic, first_offset and last_offset in that partition):
-- the sink inserts the rows of many batches at once, and a re-sent batch has the same
-- key, so the ReplacingMergeTree keeps it once (the insert deduplication token drops a
-- retried block before that). drift_stats sums the deltas of a window, so nothing is
-- emitted whole and a restarted worker needs no seeding.
-- A window written whole (the scoring agent that writes ClickHouse itself) is one row with
-- source '' and offsets 0: re-emitting it after a restart replaces it (latest flushed_at).
create table if not exists {database}.drift_deltas (
    model_version LowCardinality(String),
    feature LowCardinality(String),          -- a feature name, or __score__
    feature_index Int16,                     -- model input column, -1 for the score
    window_start DateTime64(3, 'UTC'),
    window_seconds UInt32,
    partition UInt16,                        -- valid-topic partition
    source LowCardinality(String),           -- what the offsets count, '' for a whole window
    first_offset UInt64,
    last_offset UInt64,
    rows UInt64,
    missing UInt64,                          -- rows served from defaults (score: NaN)
    counts Array(UInt64),                    -- per baseline bin
    worker_id LowCardinality(String),
    flushed_at DateTime64(3, 'UTC') default now64(3)
) engine = ReplacingMergeTree(flushed_at)
partition by toYYYYMM(window_start)
order by (model_version, feature, window_start, partition, source, first_offset, last_offset)
settings non_replicated_deduplication_window = 10000;

-- Windows written before this migration, whole, under their window key.
insert into {database}.drift_deltas
    (model_version, feature, feature_index, window_start, window_seconds, partition, source,
     first_offset, last_offset, rows, missing, counts, worker_id, flushed_at)
select model_version, feature, feature_index, window_start, window_seconds, partition, '',
       0, 0, rows, missing, counts, worker_id, flushed_at
from {database}.drift_histograms final;

-- The one PSI (streams.monitoring.drift.drift_statistics, to 1e-9): proportions of the
-- counts and of the baseline, each floored at 1e-4 (EPSILON) and renormalised, and a
-- window without a counted value has PSI, KS and JS 0. The columns and the alert rule
-- (threshold, 200 rows, noise floor) are those of migration 0006.
create or replace view {database}.drift_stats as
with
    summed as (
        select model_version, feature, window_start, any(window_seconds) as window_seconds,
               sum(rows) as rows, sum(missing) as missing, sumForEach(counts) as counts
        from {database}.drift_deltas final
        group by model_version, feature, window_start
    ),
    joined as (
        select s.*, b.threshold as threshold,
               b.critical * (1 / greatest(s.rows, 1)
                   + if(b.reference_rows > 0, 1 / b.reference_rows, 0)) as noise_floor,
               arraySum(s.counts) as total,
               arrayMap(c -> greatest(c / greatest(arraySum(s.counts), 1), 1e-4), s.counts) as p0,
               arrayMap(e -> greatest(e, 1e-4), b.expected) as q0
        from summed as s
        inner join (select * from {database}.drift_baselines final) as b
            on s.model_version = b.model_version and s.feature = b.feature
    ),
    normalised as (
        select *, arrayMap(x -> x / arraySum(p0), p0) as p, arrayMap(x -> x / arraySum(q0), q0) as q
        from joined
    ),
    measured as (
        select *,
            if(total = 0, 0, arraySum(arrayMap((a, b) -> (a - b) * log(a / b), p, q))) as psi,
            if(total = 0, 0,
               arrayMax(arrayMap((a, b) -> abs(a - b), arrayCumSum(p), arrayCumSum(q)))) as ks,
            if(total = 0, 0, sqrt(greatest(
                0.5 * arraySum(arrayMap((a, b) -> a * log2(a / ((a + b) / 2)), p, q))
                + 0.5 * arraySum(arrayMap((a, b) -> b * log2(b / ((a + b) / 2)), p, q)), 0)))
                as js_distance
        from normalised
    )
select
    window_start,
    window_seconds,
    model_version,
    feature,
    rows,
    missing / greatest(rows, 1) as missing_rate,
    psi,
    ks,
    js_distance,
    threshold,
    noise_floor,
    toUInt8(threshold > 0 and rows >= 200 and psi > threshold and psi > noise_floor) as alert
from measured
