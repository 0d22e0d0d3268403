"""One trace per evaluation across processes, exported by OTLP/HTTP to a receiver on 127.0.0.1.

A real ``sandgate serve`` (no in-process worker) takes a submit that carries an
agent's W3C ``traceparent``; a real ``sandgate worker`` process claims the
evaluation and runs it in a real sandbox. Both export to a loopback OTLP/HTTP
receiver that decodes the protobuf ``ExportTraceServiceRequest``s. The trace
must be the agent's, from the API's server span through submit, the queue
wait, the claim, the sandbox's phases and the gates to the promotion, each
span under the right parent — and the worker's JSON log lines for that
evaluation carry the same ``trace_id``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.api_harness import REPO, ApiServer, base_env, make_key, sandgate_argv
from tests.otlp_receiver import Receiver

pytestmark = pytest.mark.docker

SKILL = REPO / "examples" / "skills" / "text_stats"
AGENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
AGENT_SPAN = "b7ad6b7169203331"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def _otel_env(receiver: Receiver) -> dict[str, str]:
    # the exporter's batch is sent every 200 ms (and flushed when the process stops)
    return {"SANDGATE_OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "200"}


def _skill_json() -> dict[str, Any]:
    files = {str(p.relative_to(SKILL)): p.read_text() for p in sorted(SKILL.rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts}
    files["text_stats.py"] += "\n# traced\n"
    return {"files": files}


def _json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def test_one_trace_spans_submit_queue_claim_phases_gates_and_promotion(
        tmp_path: Path, receiver: Receiver, sandbox_image: str, no_leftovers: None) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    token = make_key(url, "agent", "admin")
    server = ApiServer(url, home=tmp_path / "home", env=_otel_env(receiver)).start()
    worker_log = tmp_path / "worker.log"
    worker: subprocess.Popen[bytes] | None = None
    try:
        with server.client(token) as client:
            r = client.post("/v1/skills/text_stats/versions", json=_skill_json(),
                            headers={"traceparent": f"00-{AGENT_TRACE}-{AGENT_SPAN}-01"})
        assert r.status_code == 202, r.text
        evaluation_id = r.json()["evaluation_id"]
        with open(worker_log, "wb") as out:
            worker = subprocess.Popen(
                sandgate_argv("worker", "--poll-interval", "0.1", "--concurrency", "1"),
                env={**base_env(url, tmp_path / "home"), **_otel_env(receiver)},
                cwd=str(REPO), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        record: dict[str, Any] = {}
        while time.monotonic() < deadline:
            record = httpx.get(f"{server.url}/v1/evaluations/{evaluation_id}",
                               headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
            if record.get("status") == "done" and record.get("promoted") is not None:
                break
            assert worker.poll() is None, worker_log.read_text()[-3000:]
            time.sleep(0.2)
        assert record.get("status") == "done", f"not evaluated in time: {record}\n{worker_log.read_text()[-3000:]}"
        assert record["verdict"] == "passed", record["reasons"]
        # the row carries the submitter's context: the agent's trace, the API's submit span
        assert record["traceparent"].startswith(f"00-{AGENT_TRACE}-")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, worker_log.read_text()[-3000:]
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(10)
        server.stop()

    spans = [s for s in receiver.spans if s["trace_id"] == AGENT_TRACE]
    names = [s["name"] for s in spans]
    by_name = {s["name"]: s for s in spans}
    expected = {"POST /v1/skills/{name}/versions", "sandgate.submit", "sandgate.queue_wait", "sandgate.evaluation",
                "sandgate.claim", "sandgate.evaluate", "sandgate.phase.static", "sandgate.phase.dynamic",
                "sandgate.phase.mutation", "sandgate.phase.oracle", "sandgate.gates", "sandgate.finish",
                "sandgate.promotion"}
    assert expected <= set(names), f"missing {expected - set(names)}; got {sorted(names)}"
    for name in expected:
        assert names.count(name) == 1, f"{name} exported {names.count(name)} times"

    def parent(child: str, of: str) -> None:
        assert by_name[child]["parent"] == by_name[of]["span_id"], f"{child} is not a child of {of}"

    server_span = by_name["POST /v1/skills/{name}/versions"]
    assert server_span["parent"] == AGENT_SPAN, "the API continued the agent's trace"
    assert server_span["service"] == "sandgate-api" and server_span["kind"] == 2  # SPAN_KIND_SERVER
    assert server_span["attributes"]["http.response.status_code"] == 202
    parent("sandgate.submit", server_span["name"])
    assert record["traceparent"] == f"00-{AGENT_TRACE}-{by_name['sandgate.submit']['span_id']}-01"
    for name in ("sandgate.queue_wait", "sandgate.evaluation"):
        parent(name, "sandgate.submit")
    for name in ("sandgate.claim", "sandgate.evaluate", "sandgate.finish", "sandgate.promotion"):
        parent(name, "sandgate.evaluation")
    for name in ("sandgate.phase.static", "sandgate.phase.dynamic", "sandgate.phase.mutation",
                 "sandgate.phase.oracle", "sandgate.gates"):
        parent(name, "sandgate.evaluate")
    worker_spans = expected - {server_span["name"], "sandgate.submit"}
    assert {by_name[n]["service"] for n in worker_spans} == {"sandgate-worker"}
    assert by_name["sandgate.submit"]["service"] == "sandgate-api"

    # time runs forward: submit, queue wait, claim, then the phases in the sandbox's order, gates, finish, promotion
    static, dynamic, mutation = (by_name[f"sandgate.phase.{p}"] for p in ("static", "dynamic", "mutation"))
    assert by_name["sandgate.submit"]["start"] <= by_name["sandgate.queue_wait"]["start"]
    assert by_name["sandgate.queue_wait"]["end"] == by_name["sandgate.claim"]["end"]
    assert by_name["sandgate.claim"]["end"] <= by_name["sandgate.evaluate"]["start"]
    assert static["end"] <= dynamic["start"] and dynamic["end"] <= mutation["start"]
    assert by_name["sandgate.evaluate"]["start"] <= static["start"]
    assert mutation["end"] <= by_name["sandgate.gates"]["start"] <= by_name["sandgate.gates"]["end"]
    assert by_name["sandgate.gates"]["end"] <= by_name["sandgate.finish"]["start"]
    assert by_name["sandgate.finish"]["end"] <= by_name["sandgate.promotion"]["start"]
    assert by_name["sandgate.gates"]["attributes"]["sandgate.verdict"] == "passed"
    assert by_name["sandgate.promotion"]["attributes"]["sandgate.promoted"] is True
    assert by_name["sandgate.evaluation"]["attributes"]["sandgate.evaluation_id"] == evaluation_id
    assert dynamic["attributes"]["sandgate.seconds"] > 0

    # the worker's JSON log lines of this evaluation carry the trace; so does the API's request line
    job_lines = [line for line in _json_lines(worker_log) if line.get("evaluation_id") == evaluation_id]
    assert {line["message"] for line in job_lines} >= {"claimed", "evaluated"}
    assert {line.get("trace_id") for line in job_lines} == {AGENT_TRACE}
    assert {line.get("span_id") for line in job_lines} == {by_name["sandgate.evaluation"]["span_id"]}
    requests = [line for line in server.log_lines()
                if line.get("message") == "request" and line.get("route") == "/v1/skills/{name}/versions"]
    assert [line.get("trace_id") for line in requests] == [AGENT_TRACE]
    assert requests[0]["span_id"] == server_span["span_id"]
