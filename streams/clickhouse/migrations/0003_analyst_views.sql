-- Analysts' views over predictions. Each reads `predictions FINAL`, so a re-delivered
-- event that is not merged away yet is counted once. Rates are shares of decided rows
-- (the decision acted on). Label-based fraud rates need chargeback labels and come with
-- them. Scores are NaN when a model could not score an event (then human_review is set),
-- so score statistics skip NaN and human_review_rate shows how often that happened.

-- Acted-on decisions per hour and model: one row per event (decided rows only).
create view if not exists {database}.decisions_per_hour as
select
    toStartOfHour(event_time) as hour,
    model_version,
    model_role,
    decision,
    count() as events,
    countIf(human_review) as human_reviews,
    avgIf(score, not isNaN(score)) as avg_score
from {database}.predictions final
where decided
group by hour, model_version, model_role, decision;

-- Every model's decisions per hour, acted on or not (champion, shadow and canary alike):
-- compare a shadow's decision mix with the champion's before promoting it.
create view if not exists {database}.model_decisions_per_hour as
select
    toStartOfHour(event_time) as hour,
    model_version,
    model_role,
    decision,
    count() as events,
    countIf(decided) as decided_events,
    countIf(human_review) as human_reviews,
    avgIf(score, not isNaN(score)) as avg_score
from {database}.predictions final
group by hour, model_version, model_role, decision;

-- Per merchant: what the acted-on decisions did to its traffic.
create view if not exists {database}.merchant_risk as
select
    merchant_id,
    merchant_country,
    count() as events,
    sum(amount) as amount,
    avgIf(score, not isNaN(score)) as avg_score,
    quantileIf(0.95)(score, not isNaN(score)) as p95_score,
    countIf(decision = 'decline') / count() as decline_rate,
    countIf(decision = 'review') / count() as review_rate,
    countIf(human_review) / count() as human_review_rate,
    min(event_time) as first_event_time,
    max(event_time) as last_event_time
from {database}.predictions final
where decided
group by merchant_id, merchant_country;

-- Per merchant country: the same, plus how many merchants it covers.
create view if not exists {database}.country_risk as
select
    merchant_country,
    uniqExact(merchant_id) as merchants,
    count() as events,
    sum(amount) as amount,
    avgIf(score, not isNaN(score)) as avg_score,
    quantileIf(0.95)(score, not isNaN(score)) as p95_score,
    countIf(decision = 'decline') / count() as decline_rate,
    countIf(decision = 'review') / count() as review_rate,
    countIf(human_review) / count() as human_review_rate,
    min(event_time) as first_event_time,
    max(event_time) as last_event_time
from {database}.predictions final
where decided
group by merchant_country;

-- Each challenger (shadow or canary) against the champion row of the same source event
-- (same raw topic, partition and offset). Score statistics skip events where either
-- score is NaN, decision agreement counts every compared event.
create view if not exists {database}.champion_vs_challenger as
with
champion as (
    select
        topic,
        partition,
        offset,
        model_version as champion_version,
        score as champion_score,
        decision as champion_decision
    from {database}.predictions final
    where model_role = 'champion'
),

challenger as (
    select
        topic,
        partition,
        offset,
        model_version as challenger_version,
        model_role as challenger_role,
        score as challenger_score,
        decision as challenger_decision
    from {database}.predictions final
    where model_role != 'champion'
),

compared as (
    select
        challenger.challenger_version as challenger_version,
        challenger.challenger_role as challenger_role,
        champion.champion_version as champion_version,
        champion.champion_score as champion_score,
        challenger.challenger_score as challenger_score,
        champion.champion_decision as champion_decision,
        challenger.challenger_decision as challenger_decision,
        not (isNaN(champion.champion_score) or isNaN(challenger.challenger_score)) as both_scored
    from challenger
    inner join champion
        on challenger.topic = champion.topic
        and challenger.partition = champion.partition
        and challenger.offset = champion.offset
)

select
    challenger_version,
    challenger_role,
    champion_version,
    count() as events,
    avgIf(champion_score, both_scored) as mean_champion_score,
    avgIf(challenger_score, both_scored) as mean_challenger_score,
    avgIf(abs(challenger_score - champion_score), both_scored) as mean_abs_score_diff,
    countIf(challenger_decision = champion_decision) / count() as decision_agreement_rate,
    countIf(champion_decision = 'decline') / count() as champion_decline_rate,
    countIf(challenger_decision = 'decline') / count() as challenger_decline_rate
from compared
group by challenger_version, challenger_role, champion_version;

-- Why was an event decided the way it was: every model's row for one event, with the
-- features scored as name → value (names from the model's models row, in order) and the
-- model card. Parameterized: select * from decision_trace(event_id = 'evt-1').
-- A vector whose model has no models row keeps positional names (#1, #2, ...).
create view if not exists {database}.decision_trace as
with
prediction as (
    select *
    from {database}.predictions final
    where event_id = {event_id:String}
),

model as (
    select
        model_version,
        feature_names,
        feature_service,
        card_path,
        thresholds
    from {database}.models final
)

select
    prediction.event_id as event_id,
    prediction.event_time as event_time,
    prediction.event_type as event_type,
    prediction.account_id as account_id,
    prediction.merchant_id as merchant_id,
    prediction.amount as amount,
    prediction.currency as currency,
    prediction.model_version as model_version,
    prediction.model_role as model_role,
    prediction.decided as decided,
    prediction.score as score,
    prediction.decision as decision,
    prediction.human_review as human_review,
    model.thresholds as thresholds,
    mapFromArrays(
        arrayMap(
            i -> if(
                i <= length(model.feature_names), model.feature_names[i], concat('#', toString(i))
            ),
            arrayEnumerate(prediction.features)
        ),
        prediction.features
    ) as features,
    prediction.missing_features as missing_features,
    prediction.missing_entities as missing_entities,
    prediction.feature_run_id as feature_run_id,
    prediction.feature_date as feature_date,
    model.feature_service as feature_service,
    model.card_path as card_path,
    prediction.topic as topic,
    prediction.partition as partition,
    prediction.offset as offset,
    prediction.run as run,
    prediction.scored_at as scored_at
from prediction
left join model on prediction.model_version = model.model_version
order by prediction.decided desc, prediction.model_role, prediction.model_version
