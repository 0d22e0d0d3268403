"""Fair share between API keys (tenants) on real SQLite and real PostgreSQL: claim order,
running and queued caps, concurrent claimers, and the 429 of a full queue over real HTTP."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from sandgate import lifecycle
from sandgate.errors import QueueFull
from sandgate.report import gave_up
from sandgate.store import evaluations, keys, versions
from tests.integration.api_harness import ApiServer, make_keys, skill_files
from tests.integration.conftest_store import make_policy, make_report, variant

pytest_plugins = ["tests.integration.conftest_store"]

A, B, C = "key:alice", "key:bob", "key:carol"


def _queue(store: Any, tenant: str, name: str, i: int, **kw: Any) -> Any:
    policy = make_policy()
    v, _ = versions.create_version(store, submission=variant(name, i), actor="t")
    return evaluations.queue_evaluation(store, name=name, number=v.number, policy_name=policy.name,
                                        policy_hash=policy.hash, tenant=tenant, **kw)


def _claim(store: Any, owner: str = "host:1:w") -> Any:
    return evaluations.claim_evaluation(store, give_up=gave_up, owner=owner)


def _finish(store: Any, ev: Any, owner: str = "host:1:w") -> None:
    evaluations.finish_evaluation(store, evaluation_id=ev.id, report=make_report(evaluation_id=ev.id),
                                  owner=owner)


def _tenant_of(store: Any, ev: Any) -> str:
    from sandgate.store.models import Evaluation

    with store.read() as s:
        return str(s.get_one(Evaluation, ev.id).tenant)


def test_a_single_submission_is_not_stuck_behind_a_flood(store):
    """One slot: alice queued 30 first, bob 1 after; bob's runs second (after the one taken first)."""
    for i in range(1, 31):
        _queue(store, A, "flood", i)
    bob = _queue(store, B, "single", 1)
    order = []
    for _ in range(5):
        ev = _claim(store)
        order.append(_tenant_of(store, ev))
        _finish(store, ev)
        if ev.id == bob.id:
            break
    assert order == [A, B], order


def test_two_slots_go_to_two_tenants(store):
    for i in range(1, 11):
        _queue(store, A, "flood", i)
    _queue(store, B, "single", 1)
    first, second = _claim(store, "host:1:a"), _claim(store, "host:2:b")
    assert {_tenant_of(store, first), _tenant_of(store, second)} == {A, B}


def test_equal_backlogs_alternate_and_each_tenant_is_fifo(store):
    """Serial claims alternate between tenants with work (least recently served first)."""
    for i in range(1, 4):
        _queue(store, A, "a_skill", i)
    for i in range(1, 4):
        _queue(store, B, "b_skill", i)
    seen = []
    for _ in range(6):
        ev = _claim(store)
        seen.append((_tenant_of(store, ev), ev.version))
        _finish(store, ev)
    assert [t for t, _ in seen] == [A, B, A, B, A, B]
    assert [n for t, n in seen if t == A] == [1, 2, 3] and [n for t, n in seen if t == B] == [1, 2, 3]
    assert _claim(store) is None


def test_local_is_one_tenant_beside_the_keys(store):
    for i in range(1, 6):
        _queue(store, evaluations.LOCAL_TENANT, "cli", i)
    _queue(store, C, "single", 1)
    first = _claim(store)
    _finish(store, first)
    second = _claim(store)
    assert {_tenant_of(store, first), _tenant_of(store, second)} == {"local", C}


def test_a_tenant_at_its_running_cap_is_skipped(store):
    keys.create_key(store, name="alice", role="submitter", actor="t", max_running=1)
    for i in range(1, 4):
        _queue(store, A, "flood", i)
    first = _claim(store, "host:1:a")
    assert _tenant_of(store, first) == A
    assert _claim(store, "host:2:b") is None, "alice is at her running cap of 1"
    bob = _queue(store, B, "single", 1)
    got = _claim(store, "host:2:b")
    assert got.id == bob.id
    _finish(store, first, "host:1:a")
    again = _claim(store, "host:1:a")
    assert _tenant_of(store, again) == A and again.version == 2


def test_the_queued_cap_refuses_and_names_the_tenant_and_limit(store):
    for i in range(1, 3):
        _queue(store, A, "flood", i, max_queued=2)
    with pytest.raises(QueueFull) as info:
        _queue(store, A, "flood", 3, max_queued=2, limit_setting="SANDGATE_API_TENANT_MAX_QUEUED=2")
    exc = info.value
    assert exc.tenant == A and exc.limit == 2 and exc.queued == 2
    assert 1 <= int(exc.retry_after) <= evaluations.RETRY_AFTER_MAX
    assert "key 'alice'" in exc.message and "SANDGATE_API_TENANT_MAX_QUEUED=2" in exc.message
    assert exc.headers == {"Retry-After": str(int(exc.retry_after))}
    _queue(store, B, "other", 1, max_queued=2)  # another tenant is not affected
    running = _claim(store)
    assert _tenant_of(store, running) == A
    _queue(store, A, "flood", 4, max_queued=2)  # a claimed one made room (running ones do not count)


def test_a_refused_submit_stores_no_version(store):
    policy = make_policy()
    for i in range(1, 3):
        lifecycle.submit(store, submission=variant("flood", i), policy=policy, actor="key:alice",
                         wait=False, tenant=A, max_queued=2)
    with pytest.raises(QueueFull):
        lifecycle.submit(store, submission=variant("flood", 3), policy=policy, actor="key:alice",
                         wait=False, tenant=A, max_queued=2)
    assert [v.number for v in versions.list_versions(store, name="flood")] == [1, 2]
    # resubmitting content already queued queues nothing new: not refused
    again = lifecycle.submit(store, submission=variant("flood", 2), policy=policy, actor="key:alice",
                             wait=False, tenant=B, max_queued=2)
    assert again.queued and not again.created


def test_retry_after_estimate_is_bounded():
    f = evaluations.retry_after_seconds
    assert f(median_seconds=10, tenants_queued=2, slots=4) == 5
    assert f(median_seconds=10, tenants_queued=0, slots=4) == 3
    assert f(median_seconds=0.01, tenants_queued=1, slots=8) == 1
    assert f(median_seconds=10_000, tenants_queued=5, slots=1) == evaluations.RETRY_AFTER_MAX
    assert f(median_seconds=10, tenants_queued=1, slots=0) == evaluations.RETRY_AFTER_MAX
    assert f(median_seconds=None, tenants_queued=1, slots=1) == 30


def test_concurrent_claimers_never_share_a_row(store, store_url):
    """Eight threads with their own engines claim 40 rows of three tenants: each row exactly once."""
    from sandgate.store import open_store

    ids = {_queue(store, t, f"s_{t[4:]}", i).id for t in (A, B, C) for i in range(1, 14)}
    ids.add(_queue(store, A, "s_alice", 14).id)
    got: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        s = open_store(store_url)
        try:
            barrier.wait()
            while True:
                ev = evaluations.claim_evaluation(s, give_up=gave_up, owner=f"host:{n}:w")
                if ev is None:
                    return
                with lock:
                    got.append(ev.id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            s.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(got) == len(set(got)) == len(ids) == 40
    assert set(got) == ids


# --------------------------------------------------------------------------- over real HTTP


@pytest.mark.postgres
def test_a_full_queue_answers_429_with_retry_after(pg_server, pg_template, tmp_path):
    url = pg_server.create_database("fairshare_http", template=pg_template)
    tokens = make_keys(url, {"flood": "submitter", "polite": "submitter"}, rate=1000, burst=1000)
    from sandgate.store import open_store

    store = open_store(url)
    _, tiny = keys.create_key(store, name="tiny", role="submitter", actor="t", max_queued=1,
                              rate_per_second=1000, burst=1000)
    store.close()
    server = ApiServer(url, home=tmp_path / "srv", env={"SANDGATE_API_TENANT_MAX_QUEUED": "2"}).start()
    try:
        with server.client(tokens["flood"]) as c:
            for i in range(2):
                r = c.post(f"/v1/skills/flood_{i}/versions", json={"files": skill_files(f"flood_{i}")})
                assert r.status_code == 202, r.text
            r = c.post("/v1/skills/flood_2/versions", json={"files": skill_files("flood_2")})
            assert r.status_code == 429, r.text
            assert r.headers["Retry-After"].isdigit() and int(r.headers["Retry-After"]) >= 1
            err = r.json()["error"]
            assert err["code"] == "queue_full" and err["tenant"] == "key:flood" and err["limit"] == 2
            assert err["queued"] == 2 and err["retry_after"] == int(r.headers["Retry-After"])
            assert "key 'flood'" in err["message"] and "SANDGATE_API_TENANT_MAX_QUEUED=2" in err["message"]
            assert c.get("/v1/skills/flood_2").status_code == 404, "a refused submit stores nothing"
        with server.client(tokens["polite"]) as c:
            r = c.post("/v1/skills/polite/versions", json={"files": skill_files("polite")})
            assert r.status_code == 202, r.text
        # a key's own cap wins over the server's
        with server.client(tiny) as c:
            assert c.post("/v1/skills/tiny_0/versions", json={"files": skill_files("tiny_0")}).status_code == 202
            r = c.post("/v1/skills/tiny_1/versions", json={"files": skill_files("tiny_1")})
            assert r.status_code == 429 and r.json()["error"]["limit"] == 1
            assert "the key's own max_queued, 1" in r.json()["error"]["message"]
        # the remote client rebuilds the error with its Retry-After
        from sandgate.client import SandgateClient

        client = SandgateClient(server.url, tokens["flood"])
        with pytest.raises(QueueFull) as info:
            client.submit_files({p: d.encode() for p, d in skill_files("flood_3").items()})
        assert info.value.retry_after is not None and info.value.retry_after >= 1
    finally:
        server.stop()
        pg_server.drop_database("fairshare_http")


@pytest.mark.postgres
def test_the_fair_claim_has_an_index_plan_on_postgresql(pg_server, pg_template):
    """1,000 queued of one key, one of another, hundreds done, ANALYZEd: no sequential scan of evaluations."""
    from sqlalchemy import select, text
    from sqlalchemy.dialects import postgresql

    from sandgate.store import open_store
    from sandgate.store.models import Evaluation

    url = pg_server.create_database("fairshare_plan", template=pg_template)
    store = open_store(url)
    try:
        for i in range(1, 1001):
            _queue(store, A, "flood", i)
        _queue(store, B, "single", 1)
        for _ in range(300):
            _finish(store, _claim(store))
        with store.write() as s:
            s.execute(text("ANALYZE"))
        fair = evaluations._fair_tenants()
        stmt = (select(Evaluation).where(Evaluation.status == "queued",
                                         Evaluation.tenant == fair.limit(1).scalar_subquery())
                .order_by(Evaluation.created_at).limit(1).with_for_update(skip_locked=True))
        sql = str(stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
        with store.read() as s:
            plan = "\n".join(r[0] for r in s.execute(text("EXPLAIN " + sql.replace("%%", "%"))))
        assert "Seq Scan on evaluations" not in plan, plan
        assert "ix_evaluations_status_tenant_created_at" in plan, plan
        assert "LockRows" in plan, plan
    finally:
        store.close()
        pg_server.drop_database("fairshare_plan")
