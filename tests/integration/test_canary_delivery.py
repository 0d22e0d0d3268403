"""The canary job (sandgate.delivery.run_canaries) on a real store, with counts as consumers send them."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest

from sandgate import delivery
from sandgate.policy import parse_policy
from sandgate.registry.loader import content_hash
from sandgate.store import (
    Store,
    audit,
    evaluations,
    pointers,
    versions,
)
from sandgate.store import canary as cs
from tests.integration.conftest_store import make_report

pytest_plugins = ["tests.integration.conftest_store"]

POLICY = parse_policy("""
[promotion]
mode = "canary"
[promotion.canary]
steps = [10, 50]
min_calls = 100
bake_seconds = 60
[promotion.canary.skills.greet]
fallback = true
""", name="canarytest")


def add_version(store: Store, tag: str) -> int:
    files = {"greet.py": f"def run(x=0):\n    return {tag!r}\n".encode(),
             "skill.toml": b'name = "greet"\nentrypoint = "greet:run"\n'}
    sub = SimpleNamespace(name="greet", files=files, manifest={"name": "greet", "entrypoint": "greet:run"},
                          content_hash=content_hash(files))
    version, _ = versions.create_version(store, submission=sub, actor="test")
    evaluations.record_evaluation(store, name="greet", number=version.number,
                           report=make_report("passed", evaluation_id=f"greet-{tag}"),
                           policy_name=POLICY.name, policy_hash=POLICY.hash)
    return version.number


def send(store: Store, generation: int, **versions: tuple[int, int]) -> None:
    """One consumer batch: ``v1=(calls, errors)`` ..."""
    reports = [{"skill": "greet", "version": int(k[1:]), "generation": generation, "calls": c, "errors": e,
                "error_types": {"ValueError": e} if e else {}, "latency": {"80": c}}
               for k, (c, e) in versions.items()]
    cs.record_runtime(store, batch={"batch_id": uuid.uuid4().hex, "consumer": "test", "reports": reports})


def started(store: Store) -> cs.CanaryRecord:
    v1 = add_version(store, "v1")
    pointers.promote(store, name="greet", number=v1, actor="test", policy=POLICY)
    v2 = add_version(store, "v2")
    return delivery.start(store, name="greet", number=v2, actor="test", policy=POLICY)


class Receiver:
    """A webhook receiver on 127.0.0.1."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers["Content-Length"])
                outer.bodies.append(json.loads(self.rfile.read(n)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Any:
    r = Receiver()
    yield r
    r.close()


def test_policy_canary_settings_reach_the_canary(store: Store) -> None:
    c = started(store)
    assert c.config["steps"] == [10, 50] and c.config["min_calls"] == 100 and c.config["fallback"] is True
    assert cs.canary_routes(store, names=["greet"]) == {"greet": (2, 10, True, 0)}


def test_a_good_candidate_advances_promotes_and_bakes(store: Store) -> None:
    c = started(store)
    assert delivery.run_canaries(store)[0]["action"] == "hold"
    send(store, c.generation, v2=(120, 0), v1=(1080, 1))
    assert delivery.run_canaries(store)[0]["action"] == "advance"
    c = cs.get_canary(store, name="greet")
    assert c.weight == 50
    send(store, c.generation, v2=(100, 0), v1=(100, 0))
    assert delivery.run_canaries(store)[0]["action"] == "promote"
    c = cs.get_canary(store, name="greet")
    assert c.state == "baking" and c.active == 2
    send(store, c.generation, v2=(500, 0))
    assert delivery.run_canaries(store)[0]["code"] == "baking"
    later = datetime.now(UTC) + timedelta(seconds=61)
    assert delivery.run_canaries(store, now=later)[0]["action"] == "complete"
    actions = [e.action for e in audit.history(store, name="greet")]
    # one event per decision that changed something; a hold only when its reason changed
    assert actions[-6:] == ["canary_started", "canary_held", "canary_advanced", "promoted", "canary_held",
                            "canary_completed"]
    promoted = [e for e in audit.history(store, name="greet") if e.action == "promoted"][-1]
    assert promoted.actor == delivery.ACTOR and promoted.evidence["decision"]["action"] == "promote"
    assert cs.get_canary(store, name="greet").state == "completed"


def test_a_bad_candidate_is_rolled_back_with_evidence_and_a_webhook(store: Store, receiver: Receiver) -> None:
    c = started(store)
    send(store, c.generation, v2=(60, 6), v1=(540, 0))
    out = delivery.run_canaries(store, webhook=receiver.url, webhook_timeout=5)
    assert out[0]["action"] == "rollback" and out[0]["webhook"]["ok"] is True
    assert cs.canary_routes(store, names=["greet"]) == {}
    event = [e for e in audit.history(store, name="greet")][-1]
    assert event.action == "canary_rolled_back" and event.actor == delivery.ACTOR
    decision = event.evidence["decision"]
    assert decision["evidence"]["candidate"]["errors"] == 6
    assert decision["evidence"]["consumers"] == {"test": 600}  # who sent the counts
    assert decision["evidence"]["error_test"]["rejected"] is True
    assert decision["evidence"]["error_test"]["threshold"] == 100
    (body,) = receiver.bodies
    assert body["event"] == "canary_rolled_back" and body["skill"] == "greet" and body["candidate"] == 2
    assert pointers.active_pointer(store, name="greet")[0] == 1
    assert delivery.run_canaries(store) == []


def test_a_regression_in_the_bake_window_rolls_back_the_active_pointer(store: Store, receiver: Receiver) -> None:
    c = started(store)
    send(store, c.generation, v2=(120, 0), v1=(5000, 5))
    delivery.run_canaries(store)
    c = cs.get_canary(store, name="greet")
    send(store, c.generation, v2=(100, 0), v1=(100, 0))
    delivery.run_canaries(store)
    c = cs.get_canary(store, name="greet")
    assert c.state == "baking"
    send(store, c.generation, v2=(1000, 60))
    out = delivery.run_canaries(store, webhook=receiver.url)
    assert out[0]["action"] == "rollback" and receiver.bodies[0]["phase"] == "bake"
    assert pointers.active_pointer(store, name="greet")[0] == 1
    last = audit.history(store, name="greet")[-1]
    assert last.action == "rolled_back" and last.evidence["automatic"] is True


def test_a_failing_webhook_does_not_undo_the_rollback(store: Store) -> None:
    c = started(store)
    send(store, c.generation, v2=(60, 6), v1=(540, 0))
    out = delivery.run_canaries(store, webhook="http://127.0.0.1:9/nothing-listens", webhook_timeout=1)
    assert out[0]["action"] == "rollback" and out[0]["webhook"]["ok"] is False
    assert cs.get_canary(store, name="greet").state == "rolled_back"


def test_a_manual_move_supersedes_the_canary(store: Store) -> None:
    started(store)
    v3 = add_version(store, "v3")
    pointers.promote(store, name="greet", number=v3, actor="person", policy=POLICY)
    assert delivery.run_canaries(store)[0]["action"] == "superseded"
    assert cs.get_canary(store, name="greet").state == "superseded"


def test_status_shows_weights_counts_and_the_decision(store: Store) -> None:
    c = started(store)
    send(store, c.generation, v2=(50, 1), v1=(450, 0))
    st = delivery.status(store, name="greet")
    assert (st["active"], st["candidate"], st["weight"]) == (1, 2, 10)
    assert st["versions"]["2"]["calls"] == 50 and st["versions"]["1"]["calls"] == 450
    assert st["decision"]["action"] == "hold" and "50/100" in st["decision"]["message"]


def test_auto_promote_in_canary_mode_starts_a_canary(store: Store) -> None:
    from sandgate.lifecycle import auto_promote

    v1 = add_version(store, "v1")
    ev1 = SimpleNamespace(verdict="passed", skill="greet", version=v1)
    move, _ = auto_promote(store, evaluation=ev1, policy=POLICY)
    assert move is not None and move.to_version == 1  # nothing to compare with: a normal promotion
    v2 = add_version(store, "v2")
    move, note = auto_promote(store, evaluation=SimpleNamespace(verdict="passed", skill="greet", version=v2),
                              policy=POLICY)
    assert move is None and note.startswith("canary started: greet@2 at 10 %")
