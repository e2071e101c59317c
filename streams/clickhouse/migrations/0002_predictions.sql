-- One row per (source event, model) scored by the worker or a replay. The key is the raw
-- event's Kafka coordinates plus the model version, so re-deliveries collapse:
--   * inserts carry a deterministic insert_deduplication_token, and the window below
--     makes ClickHouse drop a re-sent block on this non-replicated MergeTree;
--   * ReplacingMergeTree folds any row that still slips through at merge time
--     (query with FINAL for exact counts before merges).
-- Partitioned by the day a batch was scored (one value per insert), so each batch's
-- insert is a single part and lands atomically: all of it or none of it.
create table if not exists {database}.predictions (
    event_id String,
    event_time DateTime64(3, 'UTC'),
    event_type LowCardinality(String),
    account_id String,
    card_id String,
    merchant_id String,
    merchant_country LowCardinality(String),
    card_country LowCardinality(String),
    channel LowCardinality(String),
    amount Float64,
    currency LowCardinality(String),
    model_name LowCardinality(String),
    model_version LowCardinality(String),
    model_role LowCardinality(String),        -- champion, shadow or canary
    decided Bool,                             -- this model's decision is the one acted on
    score Float32,
    decision Enum8('approve' = 0, 'review' = 1, 'decline' = 2),
    human_review Bool,                        -- low-confidence band or NaN score
    missing_features UInt16,                  -- features served from defaults
    missing_entities Array(LowCardinality(String)),  -- entities unknown to the nightly run
    features Array(Float32),                  -- the vector scored, in models.feature_names order
    feature_run_id LowCardinality(String),
    feature_date Date,
    -- per-stage latency of the batch this row was scored in
    queue_ms Float32,                         -- ingested-at → batch picked up by the scorer
    feature_ms Float32,
    model_ms Float32,
    produced_at DateTime64(3, 'UTC'),         -- raw record's Kafka timestamp
    ingested_at DateTime64(3, 'UTC'),
    scored_at DateTime64(3, 'UTC'),          -- one value per batch
    inserted_at DateTime64(3, 'UTC') default now64(3),  -- when the row became queryable
    topic LowCardinality(String),             -- raw source coordinates
    partition UInt16,
    offset UInt64,
    handoff_partition UInt16,                 -- where the scorer read it (valid topic)
    handoff_offset UInt64,
    worker_id LowCardinality(String),
    run LowCardinality(String)                -- 'live' or the replay id
) engine = ReplacingMergeTree
partition by toYYYYMMDD(scored_at)
order by (topic, partition, offset, model_version)
settings non_replicated_deduplication_window = 10000;

-- Dead letters, with the original bytes, keyed like predictions on the raw coordinates.
create table if not exists {database}.dlq_events (
    topic LowCardinality(String),
    partition UInt16,
    offset UInt64,
    produced_at DateTime64(3, 'UTC'),
    dead_at DateTime64(3, 'UTC'),
    stage LowCardinality(String),
    reason LowCardinality(String),
    message String,
    paths Array(String),
    schema_id LowCardinality(String),
    event_type LowCardinality(String),
    key String,
    payload String,                           -- the original bytes, unchanged
    dlq_partition UInt16,
    dlq_offset UInt64,
    worker_id LowCardinality(String),
    sunk_at DateTime64(3, 'UTC'),             -- one value per batch (atomic inserts)
    inserted_at DateTime64(3, 'UTC') default now64(3)
) engine = ReplacingMergeTree
partition by toYYYYMMDD(sunk_at)
order by (topic, partition, offset)
settings non_replicated_deduplication_window = 10000;

-- Every model a worker served: the feature names behind predictions.features, the card.
create table if not exists {database}.models (
    model_version String,
    model_name LowCardinality(String),
    feature_service LowCardinality(String),
    feature_names Array(String),
    thresholds Map(String, Float64),
    card_path String,
    artifact_sha256 String,
    provider LowCardinality(String),
    worker_id LowCardinality(String),
    loaded_at DateTime64(3, 'UTC') default now64(3)
) engine = ReplacingMergeTree(loaded_at)
order by model_version
