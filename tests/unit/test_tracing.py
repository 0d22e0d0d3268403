"""sandgate.tracing with the SDK's InMemorySpanExporter: spans, links, the stored traceparent, log ids.

The cross-process trace (a real API server, a real worker process, a real
evaluation, a loopback OTLP/HTTP receiver) is tests/integration/test_traces.py.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sandgate import lifecycle, tracing
from sandgate.errors import ConfigError
from sandgate.evaluation import _phase_spans
from sandgate.logs import JsonFormatter
from sandgate.report import EvaluationReport, Verdict
from sandgate.store import Store, evaluations, open_store
from sandgate.submission import submission_from_files
from sandgate.worker import Worker
from tests.unit.test_worker import FakeEvaluate, policy, skill_files

AGENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
AGENT = f"00-{AGENT_TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.configure(service="sandgate-test", exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'sandgate.db'}", create=True)
    yield s
    s.close()


def by_name(exporter: InMemorySpanExporter) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for s in exporter.get_finished_spans():
        assert s.name not in found, f"two spans named {s.name}"
        found[s.name] = s
    return found


def parent_of(span: Any) -> int | None:
    return span.parent.span_id if span.parent is not None else None


# --------------------------------------------------------------------------- off by default


def test_off_by_default_nothing_of_the_sdk_is_imported_and_spans_are_no_ops() -> None:
    code = ("import sys\nfrom sandgate import lifecycle, tracing, worker\n"
            "with tracing.span('x') as s:\n    assert s is None and tracing.traceparent() is None\n"
            "assert tracing.start_span('y') is None and not tracing.enabled()\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk') "
            "or m.startswith('opentelemetry.exporter')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin"})
    assert done.stdout.strip() == "[]"


def test_the_endpoint_comes_from_the_setting_then_the_standard_variable() -> None:
    assert tracing.endpoint_from(None, {}) is None
    assert tracing.endpoint_from(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == "http://c:4318"
    assert tracing.endpoint_from("http://mine:4318", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) \
        == "http://mine:4318"
    assert tracing.endpoint_from("http://mine:4318", {"OTEL_SDK_DISABLED": "true"}) is None


def test_a_malformed_endpoint_setting_is_refused_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from sandgate.config import load_settings

    monkeypatch.setenv("SANDGATE_OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")
    with pytest.raises(ConfigError, match="(?i)otel_exporter_otlp_endpoint.*http"):
        load_settings()
    monkeypatch.setenv("SANDGATE_OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert load_settings().otel_exporter_otlp_endpoint == "http://127.0.0.1:4318"


@pytest.mark.parametrize("value", [
    None, "", "garbage", "01-" + AGENT[3:], f"00-{'0' * 32}-00f067aa0ba902b7-01",
    f"00-{AGENT_TRACE}-{'0' * 16}-01", AGENT + "-extra", AGENT.replace("4b", "zz", 1),
])
def test_only_a_well_formed_traceparent_is_accepted(value: str | None) -> None:
    assert tracing.valid_traceparent(value) is None


# --------------------------------------------------------------------------- logs


def _format(logger: logging.Logger, message: str) -> dict[str, Any]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    try:
        logger.warning(message, extra={"evaluation_id": "e1"})
    finally:
        logger.removeHandler(handler)
    return json.loads(stream.getvalue())


def test_log_lines_carry_the_current_spans_ids(spans: InMemorySpanExporter) -> None:
    logger = logging.getLogger("sandgate.test.tracing")
    assert "trace_id" not in _format(logger, "outside")
    with tracing.span("sandgate.outer", parent=AGENT) as outer:
        line = _format(logger, "inside")
    ctx = outer.get_span_context()
    assert line["trace_id"] == AGENT_TRACE == format(ctx.trace_id, "032x")
    assert line["span_id"] == format(ctx.span_id, "016x")
    assert line["evaluation_id"] == "e1" and line["message"] == "inside"
    tracing.shutdown()
    assert "trace_id" not in _format(logger, "off again")


# --------------------------------------------------------------------------- one trace, submit to promotion


def test_the_worker_continues_the_submitters_trace(store: Store, spans: InMemorySpanExporter) -> None:
    sub = submission_from_files(skill_files(1))
    with tracing.span("agent", parent=AGENT):
        result = lifecycle.submit(store, submission=sub, policy=policy(), actor="t", wait=False)
    assert result.queued
    queued = evaluations.get_evaluation(store, evaluation_id=result.evaluation.id)
    submit = by_name(spans)["sandgate.submit"]
    ctx = submit.get_span_context()
    assert queued.traceparent == f"00-{AGENT_TRACE}-{ctx.span_id:016x}-01"

    worker = Worker(store, concurrency=1, evaluate=FakeEvaluate("passed"), load_policy=lambda _n: policy(),
                    warm_pool=False, docker_client=object())
    try:
        [outcome] = worker.run_once()
    finally:
        worker.close()
    assert outcome.status == "done" and outcome.promoted == 1

    got = by_name(spans)
    assert {s.context.trace_id for s in got.values()} == {int(AGENT_TRACE, 16)}, "one trace"
    job = got["sandgate.evaluation"]
    assert parent_of(got["sandgate.submit"]) == got["agent"].context.span_id
    assert parent_of(got["sandgate.queue_wait"]) == ctx.span_id
    assert parent_of(job) == ctx.span_id
    for child in ("sandgate.claim", "sandgate.finish", "sandgate.promotion"):
        assert parent_of(got[child]) == job.context.span_id, child
    claim, wait = got["sandgate.claim"], got["sandgate.queue_wait"]
    assert job.start_time == claim.start_time <= claim.end_time <= got["sandgate.finish"].start_time
    assert wait.end_time == claim.end_time and wait.start_time <= claim.start_time
    assert got["sandgate.promotion"].attributes["sandgate.promoted"] is True
    assert job.attributes["sandgate.evaluation_id"] == result.evaluation.id
    assert job.attributes["sandgate.verdict"] == "passed"
    assert job.end_time >= got["sandgate.promotion"].end_time


def test_without_traces_nothing_is_stored_on_the_row(store: Store) -> None:
    result = lifecycle.submit(store, submission=submission_from_files(skill_files(2)), policy=policy(),
                              actor="t", wait=False)
    assert evaluations.get_evaluation(store, evaluation_id=result.evaluation.id).traceparent is None


def test_an_oversized_traceparent_is_refused_by_the_store(store: Store) -> None:
    from sandgate.errors import StoreError
    from sandgate.store import versions

    sub = submission_from_files(skill_files(3))
    v, _ = versions.create_version(store, submission=sub, actor="t")
    with pytest.raises(StoreError, match="traceparent"):
        evaluations.queue_evaluation(store, name=v.skill, number=v.number, policy_name="p", policy_hash="h",
                                     traceparent="00-" + "a" * 80)


def test_an_embedded_submit_is_one_trace_with_the_evaluation_inside(store: Store,
                                                                   spans: InMemorySpanExporter) -> None:
    lifecycle.submit(store, submission=submission_from_files(skill_files(4)), policy=policy(), actor="t",
                     evaluate=FakeEvaluate("failed"), wait=True)
    got = by_name(spans)
    submit = got["sandgate.submit"]
    assert submit.parent is None and submit.attributes["sandgate.verdict"] == "failed"
    assert parent_of(got["sandgate.finish"]) == submit.context.span_id
    assert got["sandgate.finish"].attributes["sandgate.verdict"] == "failed"
    assert "sandgate.promotion" in got and got["sandgate.promotion"].attributes["sandgate.promoted"] is False


# --------------------------------------------------------------------------- the phases, from the harness's timings


def test_phase_spans_are_laid_from_the_harness_timings(spans: InMemorySpanExporter) -> None:
    s = 1_000_000_000
    t0 = 1_700_000_000 * s
    report = EvaluationReport(evaluation_id="e", verdict=Verdict.passed, timings={
        "sandbox_create": 0.2, "sandbox_start": 0.1, "payload": 0.05, "static": 0.3, "dynamic": 0.5,
        "mutation": 9.0, "oracle": 0.4})
    marks = {"run": t0, "run_end": t0 + 2 * s, "oracle": t0 + s // 2, "conclude": t0 + 2 * s,
             "oracle_end": t0 + 2 * s + s // 4}
    with tracing.span("sandgate.evaluate") as parent:
        _phase_spans(report, marks)
    got = by_name(spans)
    static, dynamic = got["sandgate.phase.static"], got["sandgate.phase.dynamic"]
    mutation, oracle = got["sandgate.phase.mutation"], got["sandgate.phase.oracle"]
    for phase in (static, dynamic, mutation, oracle):
        assert parent_of(phase) == parent.get_span_context().span_id
    assert static.start_time == t0 + int(0.35 * s)
    assert static.end_time == static.start_time + int(0.3 * s) == dynamic.start_time
    assert dynamic.end_time == dynamic.start_time + int(0.5 * s) == mutation.start_time
    assert mutation.end_time == t0 + 2 * s, "clamped to the end of the sandbox run"
    assert (oracle.start_time, oracle.end_time) == (t0 + s // 2, t0 + 2 * s + s // 4)
    assert dynamic.attributes["sandgate.seconds"] == 0.5


def test_a_phase_the_harness_did_not_report_has_no_span(spans: InMemorySpanExporter) -> None:
    report = EvaluationReport(evaluation_id="e", verdict=Verdict.rejected, timings={"static": 0.1})
    _phase_spans(report, {"run": 10**18, "run_end": 10**18 + 10**9})
    assert [s.name for s in spans.get_finished_spans()] == ["sandgate.phase.static"]


# --------------------------------------------------------------------------- the API's server span


def test_a_server_span_continues_an_incoming_traceparent(spans: InMemorySpanExporter) -> None:
    with tracing.server_span("POST /v1/skills/{name}/versions", {"traceparent": AGENT}) as server:
        inner = tracing.traceparent()
    assert server.get_span_context().trace_id == int(AGENT_TRACE, 16)
    assert server.parent.span_id == 0x00F067AA0BA902B7
    assert inner == f"00-{AGENT_TRACE}-{server.get_span_context().span_id:016x}-01"
    with tracing.server_span("GET /x", {"traceparent": "nonsense"}) as fresh:
        pass
    assert fresh.parent is None and fresh.get_span_context().trace_id != int(AGENT_TRACE, 16)


# --------------------------------------------------------------------------- a real process, a real exporter


def test_an_embedded_cli_submit_exports_its_span_by_otlp_http(tmp_path: Path) -> None:
    """``sandgate submit --no-wait`` on the embedded store, exporting to a receiver on 127.0.0.1:
    its ``sandgate.submit`` span arrives by OTLP/HTTP, and the queued row names it."""
    import os

    from tests.otlp_receiver import Receiver

    skill = Path(__file__).resolve().parents[2] / "examples" / "skills" / "text_stats"
    home = tmp_path / "home"
    with Receiver() as receiver:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SANDGATE_", "OTEL_"))}
        env.update({"SANDGATE_HOME": str(home), "SANDGATE_OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                    "DOCKER_HOST": "unix:///nonexistent/docker.sock"})
        done = subprocess.run([sys.executable, "-m", "sandgate", "submit", "--no-wait", "--json", str(skill)],
                              env=env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
    evaluation_id = json.loads(done.stdout)["evaluation_id"]
    [span] = [s for s in receiver.spans if s["name"] == "sandgate.submit"]
    assert span["service"] == "sandgate-cli" and span["parent"] is None
    assert span["attributes"]["sandgate.evaluation_id"] == evaluation_id
    store = open_store(f"sqlite:///{home / 'sandgate.db'}")
    try:
        row = evaluations.get_evaluation(store, evaluation_id=evaluation_id)
    finally:
        store.close()
    assert row.traceparent is not None and row.traceparent.startswith(f"00-{span['trace_id']}-{span['span_id']}-")
    assert int(row.traceparent[-2:], 16) & 1, "sampled"  # (0x02: the SDK made the trace id at random)


def test_a_row_queued_while_traces_were_off_gets_a_trace_of_its_own(store: Store) -> None:
    result = lifecycle.submit(store, submission=submission_from_files(skill_files(5)), policy=policy(),
                              actor="t", wait=False)
    exporter = InMemorySpanExporter()
    tracing.configure(service="sandgate-test", exporter=exporter)
    try:
        worker = Worker(store, concurrency=1, evaluate=FakeEvaluate("passed"), load_policy=lambda _n: policy(),
                        warm_pool=False, docker_client=object())
        try:
            [outcome] = worker.run_once()
        finally:
            worker.close()
    finally:
        tracing.shutdown()
    assert outcome.status == "done"
    got = by_name(exporter)
    job = got["sandgate.evaluation"]
    assert "sandgate.queue_wait" not in got and job.parent is None
    assert job.attributes["sandgate.evaluation_id"] == result.evaluation.id
    assert job.attributes["sandgate.queue_wait_seconds"] >= 0
    assert {s.context.trace_id for s in got.values()} == {job.context.trace_id}
    assert parent_of(got["sandgate.claim"]) == job.context.span_id
