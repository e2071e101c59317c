"""The demo's pure parts: pacing, config, summary text, fraud rate. No network."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streams.demo import (
    DECISION_LATENCY_NOTE,
    Agreement,
    DemoConfig,
    DemoSummary,
    MerchantRisk,
    Pacer,
    QuietObserver,
    _decision_latency,
    _Steps,
    captured_output,
    demo_settings,
    format_summary,
    fraud_rate_for,
    latency_percentiles,
    summary_json,
)
from streams.settings import Settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_pacer_sleeps_until_each_event_is_due() -> None:
    clock = FakeClock()
    pacer = Pacer(1000.0, clock=clock, sleep=clock.sleep)
    pacer.wait(0)
    assert clock.slept == []  # the first event is due at once
    pacer.wait(500)
    assert clock.slept == [pytest.approx(0.5)]
    assert pacer.elapsed == pytest.approx(0.5)


def test_pacer_makes_up_for_a_late_sender_instead_of_drifting() -> None:
    clock = FakeClock()
    pacer = Pacer(100.0, clock=clock, sleep=clock.sleep)
    clock.now += 2.0  # the sender stalled for 2 s: events 0..199 are all overdue
    assert pacer.delay(150) == 0.0
    pacer.wait(199)
    assert clock.slept == []
    assert pacer.delay(300) == pytest.approx(1.0)  # due at 3 s, now is 2 s


def test_pacer_at_rate_zero_never_sleeps() -> None:
    clock = FakeClock()
    pacer = Pacer(0.0, clock=clock, sleep=clock.sleep)
    pacer.wait(1_000_000)
    assert clock.slept == []


def test_total_events_is_rate_times_seconds_unless_given() -> None:
    assert DemoConfig(rate=1000, seconds=60).total_events == 60_000
    assert DemoConfig(rate=1000, seconds=60, events=123).total_events == 123
    assert DemoConfig(rate=0.5, seconds=1).total_events == 1
    with pytest.raises(ValueError, match="--events"):
        _ = DemoConfig(rate=0).total_events


def test_fraud_rate_is_one_percent_for_big_worlds_and_capped_for_small_ones() -> None:
    assert fraud_rate_for(5_000) == 0.01
    assert fraud_rate_for(50_000) == 0.01
    assert fraud_rate_for(2_500) == pytest.approx(0.02)
    assert fraud_rate_for(800) == 0.05
    assert fraud_rate_for(0) == 0.05


def test_demo_settings_isolate_the_run_and_keep_models_out_of_the_checkout(
    tmp_path: Path,
) -> None:
    base = Settings(home=tmp_path / "home", web_enabled=False)
    one, two = demo_settings(base, "aaa111"), demo_settings(base, "bbb222")
    assert one.topic_prefix == "streamscore.demo-aaa111."
    assert one.app_id != two.app_id and one.topic_prefix != two.topic_prefix
    assert one.models_dir == tmp_path / "home" / "models"
    assert one.lake_url == str(tmp_path / "home" / "demo-lake")
    assert one.web_enabled and 0 < one.web_port < 65536


def summary() -> DemoSummary:
    return DemoSummary(
        raw_topic="streamscore.demo-abc.events.raw",
        produced=1030,
        produce_seconds=1.03,
        expected_valid=1000,
        expected_dead={"schema_violation": 25, "not_json": 5},
        scored=1000,
        decisions={"approve": 950, "review": 40, "decline": 10},
        human_review=12,
        dlq={"not_json": 5, "schema_violation": 25},
        latency_ms={"p50": 12.4, "p99": 48.6, "max": 70.0},
        merchants=[MerchantRisk("m_000042", "DE", 31, 0.0645, 0.41234)],
        agreement=[Agreement("fraud_lightgbm-1", "fraud_mlp-1", 1000, 0.987, 0.01234)],
        models={"fraud_lightgbm-1": ("champion", "CPUExecutionProvider")},
        durations_s={"nightly": 30.0, "stream": 60.04},
        complete=True,
    )


def test_summary_names_every_number_the_demo_promises() -> None:
    text = "\n".join(format_summary(summary()))
    assert "events produced             1,030  (1,000 events/s)" in text
    assert "events scored               1,000  (expected 1,000)" in text
    assert "decline                      10  (1.0%)" in text
    assert "human review                 12  (1.2%)" in text
    assert "dead letters                   30  (expected 30)" in text
    assert "p50 12 ms  p99 49 ms" in text
    assert "latency produce→decision   not measured" in text  # until the decisions topic
    assert "m_000042" in text and "6.5%" in text and "0.412" in text
    assert "98.7% same decision over 1,000 events" in text
    assert "fraud_lightgbm-1 (champion) on ONNX Runtime CPUExecutionProvider" in text
    assert "took 90.0s" in text


def test_summary_lists_dead_letter_reasons_most_frequent_first() -> None:
    lines = format_summary(summary())
    reasons = [line.split()[0] for line in lines if line.startswith(("  not_json", "  schema_v"))]
    assert reasons == ["schema_violation", "not_json"]


def test_summary_of_an_empty_run_has_no_division_by_zero() -> None:
    lines = format_summary(DemoSummary())
    assert any("events scored" in line for line in lines)
    assert not any("latency" in line for line in lines)
    assert not any("shadow" in line for line in lines)


def test_summary_json_has_every_promised_key_with_decision_latency_null_until_measured() -> None:
    data = orjson.loads(orjson.dumps(summary_json(summary())))  # JSON all the way
    assert data["scored"] == 1000 and data["expected_scored"] == 1000
    assert data["dead"] == 30 and data["expected_dead"] == 30
    assert data["dead_by_reason"] == {"not_json": 5, "schema_violation": 25}
    assert data["queryable_p50_ms"] == 12.4 and data["queryable_p99_ms"] == 48.6
    assert data["decision_p50_ms"] is None and data["decision_p99_ms"] is None
    assert data["notes"] == [DECISION_LATENCY_NOTE]
    assert data["models"] == [
        {"model": "fraud_lightgbm-1", "role": "champion", "provider": "CPUExecutionProvider"}
    ]
    assert data["complete"] is True and data["produced"] == 1030
    assert data["produced_per_s"] == 1000.0 and data["total_s"] == 90.0


def test_summary_json_and_text_carry_decision_latency_once_measured() -> None:
    measured = summary()
    measured.decision_latency_ms = {"p50": 7.8, "p99": 24.0, "max": 31.0}
    measured.models["fraud_mlp-1"] = ("shadow", "CUDAExecutionProvider")
    data = summary_json(measured)
    assert (data["decision_p50_ms"], data["decision_p99_ms"]) == (7.8, 24.0)
    assert data["notes"] == []
    assert [m["role"] for m in data["models"]] == ["champion", "shadow"]
    text = "\n".join(format_summary(measured))
    assert "latency produce→decision   p50 8 ms  p99 24 ms" in text
    assert "latency produce→queryable  p50 12 ms  p99 49 ms" in text


def test_summary_json_of_an_empty_run_says_what_is_missing() -> None:
    data = summary_json(DemoSummary())
    assert data["scored"] == 0 and data["queryable_p99_ms"] is None
    assert data["produced_per_s"] is None and data["models"] == []
    assert len(data["notes"]) == 2


def test_captured_output_takes_python_c_level_and_child_output(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "logs" / "nightly.log"
    # A handler set up before the step on the process's stderr, descriptor 2 (pytest's own
    # sys.stderr is not on it).
    stderr = open(2, "w", closefd=False)  # noqa: SIM115 - closed below, fd 2 stays open
    logger = logging.getLogger("streams.test.demo")
    handler = logging.StreamHandler(stderr)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with captured_output(log):
            print("a print")
            logger.warning("a warning record")
            os.write(1, b"fd one\n")  # as librdkafka or ONNX Runtime write
            os.write(2, b"fd two\n")
            subprocess.run([sys.executable, "-c", "print('a child')"], check=True)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        stderr.close()
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    text = log.read_text()
    for line in ("a print", "a warning record", "fd one", "fd two", "a child"):
        assert line in text, (line, text)
    print("back")
    os.write(2, b"back on fd two\n")
    out, err = capfd.readouterr()
    assert out == "back\n" and err == "back on fd two\n"


class Said(QuietObserver):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def say(self, line: str) -> None:
        self.lines.append(line)


def test_a_failed_step_names_its_log_and_the_log_holds_its_output(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    observer, durations = Said(), {}
    steps = _Steps(observer, durations, tmp_path / "demo-logs")
    with steps.step("setup", "fine"):
        print("setup talks")
    with pytest.raises(RuntimeError), steps.step("nightly", "breaks"):
        print("Materializing 3 feature views")
        raise RuntimeError("dbt failed")
    assert capfd.readouterr().out == ""
    assert (tmp_path / "demo-logs" / "setup.log").read_text() == "setup talks\n"
    nightly = tmp_path / "demo-logs" / "nightly.log"
    assert "Materializing" in nightly.read_text()
    assert observer.lines == [f"nightly failed; its output is in {nightly}"]
    assert set(durations) == {"setup", "nightly"}
    # Without a folder nothing is captured.
    with _Steps(observer, {}).step("stream", "plain"):
        print("shown")
    assert capfd.readouterr().out == "shown\n"


def test_decision_latency_is_received_minus_the_raw_records_produce_time() -> None:
    decision = orjson.dumps({"event_id": "e1", "produced_at_ms": 1_000, "score": 0.1})
    assert _decision_latency(decision, 1_012.5) == [12.5]
    assert _decision_latency(orjson.dumps({"event_id": "e1"}), 1_012.5) == []
    assert _decision_latency(orjson.dumps([1, 2]), 5.0) == []
    assert _decision_latency(None, 5.0) == []
    assert _decision_latency(decision, 1_012.5, since_ms=1_001) == []  # a warm-up event


def test_latency_percentiles_pick_as_clickhouse_quantile_exact_does() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, unsorted
    # quantileExact(level) is the sorted array's element at int(level * n).
    assert latency_percentiles(values) == {"p50": 51.0, "p99": 100.0, "max": 100.0}
    assert latency_percentiles([3.14159]) == {"p50": 3.1, "p99": 3.1, "max": 3.1}
    assert latency_percentiles([]) == {}
