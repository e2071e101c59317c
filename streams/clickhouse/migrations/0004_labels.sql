-- Late labels (chargebacks, customer reports, analyst reviews) and the views that judge
-- models by them. A label's transaction_id is the scored transaction's event_id.
--
-- Keyed like predictions on the label's raw Kafka coordinates (labels.raw topic, partition,
-- offset, from the source-* headers of the valid hand-off), so re-deliveries collapse:
-- the labels agent checks which coordinates are stored before each insert, inserts carry a
-- deterministic insert_deduplication_token, and ReplacingMergeTree folds what is left.
-- Partitioned by the day a batch was stored (one value per insert): one part per insert.
create table if not exists {database}.labels (
    event_id String,                          -- the label event's own id
    transaction_id String,                    -- predictions.event_id of the labelled event
    account_id String,
    is_fraud Bool,
    label_time DateTime64(3, 'UTC'),
    source LowCardinality(String),            -- chargeback, customer_report, analyst_review
    fraud_type LowCardinality(Nullable(String)),
    chargeback_amount Nullable(Float64),
    produced_at DateTime64(3, 'UTC'),         -- raw record's Kafka timestamp
    ingested_at DateTime64(3, 'UTC'),
    topic LowCardinality(String),             -- raw source coordinates
    partition UInt16,
    offset UInt64,
    handoff_partition UInt16,                 -- where the agent read it (valid topic)
    handoff_offset UInt64,
    worker_id LowCardinality(String),
    sunk_at DateTime64(3, 'UTC'),             -- one value per batch (atomic inserts)
    inserted_at DateTime64(3, 'UTC') default now64(3)
) engine = ReplacingMergeTree
partition by toYYYYMMDD(sunk_at)
order by (topic, partition, offset)
settings non_replicated_deduplication_window = 10000;

-- One label per transaction: the latest by label_time wins (a chargeback after a customer
-- report, an analyst overturning a report). Equal times go to the later raw offset (labels
-- are keyed by account, so one transaction's labels share a raw partition, in order).
create view if not exists {database}.latest_labels as
select
    transaction_id,
    argMax(is_fraud, (label_time, offset)) as is_fraud,
    argMax(source, (label_time, offset)) as source,
    argMax(fraud_type, (label_time, offset)) as fraud_type,
    max(label_time) as last_label_time,
    count() as labels
from {database}.labels final
group by transaction_id;

-- Label-based performance per day of event_time and model version.
--
-- Rows: one per (event, model version) whatever the run. Live scoring and replays never
-- write the same (event, version) twice (marks, existence checks), so counting every run
-- adds a model replayed over history (`streamscore replay --model`) without counting
-- anything twice. Should a pair exist twice anyway (an event re-sent at a new raw offset,
-- deduplication off), the live row is kept.
-- Decisions: decline is the positive prediction (precision, recall), review is not:
-- the payment goes through while a person looks. flag_precision and flag_recall count
-- review or decline as positive, the workload view. roc_auc uses the scores, is null when
-- the day has only one class, and skips NaN scores (counted in unscored).
create view if not exists {database}.model_performance_daily as
with
prediction as (
    select
        event_id,
        event_time,
        model_name,
        model_version,
        model_role,
        score,
        decision
    from {database}.predictions final
    order by event_id, model_version, run = 'live' desc, scored_at
    limit 1 by event_id, model_version
),

labelled as (
    select
        toDate(prediction.event_time) as day,
        prediction.model_name as model_name,
        prediction.model_version as model_version,
        prediction.model_role as model_role,
        prediction.score as score,
        prediction.decision as decision,
        latest_labels.is_fraud as is_fraud
    from prediction
    inner join {database}.latest_labels as latest_labels
        on prediction.event_id = latest_labels.transaction_id
),

daily as (
    select
        day,
        model_version,
        any(model_name) as model_name,
        arraySort(groupUniqArray(model_role)) as model_roles,
        count() as labelled_events,
        countIf(is_fraud) as positives,
        countIf(decision = 'decline') as declined,
        countIf(decision = 'decline' and is_fraud) as true_positives,
        countIf(decision != 'approve') as flagged,
        countIf(decision != 'approve' and is_fraud) as flagged_positives,
        countIf(isNaN(score)) as unscored,
        -- (score, label) of scored events in one array, so the two stay aligned
        groupArrayIf((toFloat64(score), toUInt8(is_fraud)), not isNaN(score)) as pairs
    from labelled
    group by day, model_version
)

select
    day,
    model_version,
    model_name,
    model_roles,
    labelled_events,
    positives,
    declined,
    true_positives,
    true_positives / nullIf(declined, 0) as precision,
    true_positives / nullIf(positives, 0) as recall,
    flagged_positives / nullIf(flagged, 0) as flag_precision,
    flagged_positives / nullIf(positives, 0) as flag_recall,
    unscored,
    if(
        arrayExists(p -> p.2 = 1, pairs) and arrayExists(p -> p.2 = 0, pairs),
        arrayAUC(arrayMap(p -> p.1, pairs), arrayMap(p -> p.2, pairs)),
        null
    ) as roc_auc
from daily;

-- Champion against each challenger on the same events: the live champion's row and the
-- challenger's row for one event_id (one row per event and version, as above). A
-- challenger is any other version that scored the event: a shadow or canary in the live
-- run, or a model replayed over the range (`streamscore replay --model`, role 'replay').
-- Score statistics skip events where either score is NaN, agreement counts every compared
-- event. Label columns use the latest label of each compared event once labels exist
-- (decline = positive, as in model_performance_daily). AUCs are over labelled events
-- that both scored, so the two are comparable, and null until both classes appear.
-- Parameterised by the earliest event_time to compare: model_comparison_since(since = …),
-- model_comparison is every event.
create view if not exists {database}.model_comparison_since as
with
prediction as (
    select
        event_id,
        event_time,
        model_version,
        model_role,
        run,
        score,
        decision
    from {database}.predictions final
    where event_time >= {since:DateTime64(3, 'UTC')}
    order by event_id, model_version, run = 'live' desc, scored_at
    limit 1 by event_id, model_version
),

champion as (
    select
        event_id,
        event_time,
        model_version as champion_version,
        score as champion_score,
        decision as champion_decision
    from prediction
    where run = 'live' and model_role = 'champion'
),

challenger as (
    select
        event_id,
        model_version as challenger_version,
        if(run = 'live', model_role, 'replay') as challenger_role,
        score as challenger_score,
        decision as challenger_decision
    from prediction
),

compared as (
    select
        champion.champion_version as champion_version,
        challenger.challenger_version as challenger_version,
        challenger.challenger_role as challenger_role,
        champion.event_time as event_time,
        champion.champion_score as champion_score,
        challenger.challenger_score as challenger_score,
        champion.champion_decision as champion_decision,
        challenger.challenger_decision as challenger_decision,
        not (isNaN(champion.champion_score) or isNaN(challenger.challenger_score)) as both_scored,
        latest_labels.labels > 0 as labelled,
        latest_labels.is_fraud as is_fraud
    from challenger
    inner join champion on challenger.event_id = champion.event_id
    left join {database}.latest_labels as latest_labels
        on challenger.event_id = latest_labels.transaction_id
    where challenger.challenger_version != champion.champion_version
),

pairs as (
    select
        champion_version,
        challenger_version,
        arrayStringConcat(arraySort(groupUniqArray(challenger_role)), ',') as challenger_roles,
        min(event_time) as first_event_time,
        max(event_time) as last_event_time,
        count() as events,
        countIf(both_scored) as scored_by_both,
        avgIf(champion_score, both_scored) as champion_score_mean,
        quantileIf(0.5)(champion_score, both_scored) as champion_score_p50,
        quantileIf(0.9)(champion_score, both_scored) as champion_score_p90,
        avgIf(challenger_score, both_scored) as challenger_score_mean,
        quantileIf(0.5)(challenger_score, both_scored) as challenger_score_p50,
        quantileIf(0.9)(challenger_score, both_scored) as challenger_score_p90,
        countIf(challenger_decision = champion_decision) / count() as decision_agreement,
        countIf(champion_decision = 'decline') / count() as champion_decline_rate,
        countIf(challenger_decision = 'decline') / count() as challenger_decline_rate,
        countIf(labelled) as labelled_events,
        countIf(labelled and is_fraud) as positives,
        countIf(labelled and champion_decision = 'decline') as champion_declined,
        countIf(labelled and champion_decision = 'decline' and is_fraud) as champion_true_positives,
        countIf(labelled and challenger_decision = 'decline') as challenger_declined,
        countIf(labelled and challenger_decision = 'decline' and is_fraud)
            as challenger_true_positives,
        -- (champion score, challenger score, label) of labelled events both scored
        groupArrayIf(
            (toFloat64(champion_score), toFloat64(challenger_score), toUInt8(is_fraud)),
            labelled and both_scored
        ) as scored_labels
    from compared
    group by champion_version, challenger_version
)

select
    champion_version,
    challenger_version,
    challenger_roles,
    first_event_time,
    last_event_time,
    events,
    scored_by_both,
    champion_score_mean,
    champion_score_p50,
    champion_score_p90,
    challenger_score_mean,
    challenger_score_p50,
    challenger_score_p90,
    decision_agreement,
    champion_decline_rate,
    challenger_decline_rate,
    labelled_events,
    positives,
    champion_true_positives / nullIf(champion_declined, 0) as champion_precision,
    champion_true_positives / nullIf(positives, 0) as champion_recall,
    challenger_true_positives / nullIf(challenger_declined, 0) as challenger_precision,
    challenger_true_positives / nullIf(positives, 0) as challenger_recall,
    if(
        arrayExists(s -> s.3 = 1, scored_labels) and arrayExists(s -> s.3 = 0, scored_labels),
        arrayAUC(arrayMap(s -> s.1, scored_labels), arrayMap(s -> s.3, scored_labels)),
        null
    ) as champion_auc,
    if(
        arrayExists(s -> s.3 = 1, scored_labels) and arrayExists(s -> s.3 = 0, scored_labels),
        arrayAUC(arrayMap(s -> s.2, scored_labels), arrayMap(s -> s.3, scored_labels)),
        null
    ) as challenger_auc
from pairs;

create view if not exists {database}.model_comparison as
select *
from {database}.model_comparison_since(since = '1970-01-01 00:00:00.000');
