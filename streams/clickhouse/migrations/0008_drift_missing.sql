-- A missing-share rule beside the PSI rule (streams.monitoring.drift, Baseline.missing_alerts).
-- Rows served from defaults are binned at their default, as in training, so a feature
-- whose default is its commonest value can go missing without moving its PSI. A window
-- now also alerts when its missing share is above the baseline's expected share by more
-- than 0.05 (MISSING_MARGIN) and by more than 3.0902 (Z_999) standard errors of the
-- difference, with the PSI rule's threshold-0 and 200-row gates. `alert` is either rule;
-- `psi_alert` and `missing_alert` say which. The statistics are those of migration 0007.
alter table {database}.drift_baselines add column if not exists missing_expected Float64 default 0;

create or replace view {database}.drift_stats as
with
    summed as (
        select model_version, feature, window_start, any(window_seconds) as window_seconds,
               sum(rows) as rows, sum(missing) as missing, sumForEach(counts) as counts
        from {database}.drift_deltas final
        group by model_version, feature, window_start
    ),
    joined as (
        select s.*, b.threshold as threshold, b.missing_expected as missing_expected,
               b.critical * (1 / greatest(s.rows, 1)
                   + if(b.reference_rows > 0, 1 / b.reference_rows, 0)) as noise_floor,
               b.missing_expected + greatest(0.05, 3.0902 * sqrt(
                   b.missing_expected * (1 - b.missing_expected)
                   * (1 / greatest(s.rows, 1)
                      + if(b.reference_rows > 0, 1 / b.reference_rows, 0)))) as missing_floor,
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
                as js_distance,
            missing / greatest(rows, 1) as missing_rate
        from normalised
    ),
    ruled as (
        select *,
            toUInt8(threshold > 0 and rows >= 200 and psi > threshold and psi > noise_floor)
                as psi_alert,
            toUInt8(threshold > 0 and rows >= 200 and missing_rate > missing_floor)
                as missing_alert
        from measured
    )
select
    window_start,
    window_seconds,
    model_version,
    feature,
    rows,
    missing_rate,
    psi,
    ks,
    js_distance,
    threshold,
    noise_floor,
    toUInt8(psi_alert or missing_alert) as alert,
    psi_alert,
    missing_expected,
    missing_floor,
    missing_alert
from ruled
