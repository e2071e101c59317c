-- Drift alerts need significance as well as size. Without drift, a window's PSI is about
-- chi2(k - 1) * (1/rows + 1/reference_rows) for k non-empty baseline bins, so a window
-- alerts only when PSI passes both the feature's threshold and that noise floor at the
-- chi2 0.999 quantile (critical, written by the worker with each baseline). Baselines
-- written before this migration have critical 0: their alerts keep the old rule.
alter table {database}.drift_baselines add column if not exists reference_rows UInt64 default 0;

alter table {database}.drift_baselines add column if not exists critical Float64 default 0;

create or replace view {database}.drift_stats as
with
    summed as (
        select model_version, feature, window_start, any(window_seconds) as window_seconds,
               sum(rows) as rows, sum(missing) as missing, sumForEach(counts) as counts
        from {database}.drift_histograms final
        group by model_version, feature, window_start
    ),
    joined as (
        select s.*, b.threshold as threshold,
               b.critical * (1 / greatest(s.rows, 1)
                   + if(b.reference_rows > 0, 1 / b.reference_rows, 0)) as noise_floor,
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
            arraySum(arrayMap((a, b) -> (a - b) * log(a / b), p, q)) as psi
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
    arrayMax(arrayMap((a, b) -> abs(a - b), arrayCumSum(p), arrayCumSum(q))) as ks,
    sqrt(greatest(
        0.5 * arraySum(arrayMap((a, b) -> a * log2(a / ((a + b) / 2)), p, q))
        + 0.5 * arraySum(arrayMap((a, b) -> b * log2(b / ((a + b) / 2)), p, q)), 0)) as js_distance,
    threshold,
    noise_floor,
    toUInt8(threshold > 0 and rows >= 200 and psi > threshold and psi > noise_floor) as alert
from measured
