-- One row per `streamscore nightly` run, successful or not. Workers swap their in-memory
-- feature tables when a newer successful run appears here.
create table if not exists {database}.feature_runs (
    run_id String,
    nightly_date Date,
    feature_service LowCardinality(String),
    status LowCardinality(String),
    started_at DateTime64(3, 'UTC'),
    finished_at DateTime64(3, 'UTC'),
    rows Map(String, UInt64),
    durations_s Map(String, Float64),
    error String
) engine = MergeTree
order by (nightly_date, started_at)
