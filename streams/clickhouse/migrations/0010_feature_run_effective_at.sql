-- When each nightly run's features take effect: its finish plus
-- STREAMSCORE_FEATURE_SWITCH_DELAY_S, so every scoring process has loaded the run before
-- any event is scored with it (streams.features.runs states the rule the live worker and
-- replays share). Runs recorded before this migration take effect at their finish.
alter table {database}.feature_runs
    add column if not exists effective_at DateTime64(3, 'UTC') default finished_at
    after error
