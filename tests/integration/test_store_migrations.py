"""Migrations on real SQLite and real PostgreSQL: data survives, concurrent opens are safe."""

from __future__ import annotations

import json
import multiprocessing

import pytest
from sqlalchemy import inspect, text

from sandgate.errors import StoreError
from sandgate.store import audit, evaluations, open_store, pointers, versions
from sandgate.store.engine import _make_engine
from sandgate.store.migrate import current_revision, head_revision, upgrade
from sandgate.store.models import Base
from tests.integration.conftest_store import make_policy, variant

pytest_plugins = ["tests.integration.conftest_store"]

T0 = "2025-01-01 10:00:00+00:00"


def _seed_at_0001(conn) -> None:  # type: ignore[no-untyped-def]
    """Rows written with the 0001 schema only (plain SQL, no models)."""
    j = json.dumps
    conn.execute(
        text("INSERT INTO skills (id, name, created_at, generation) VALUES (1, 'greet', :t, 0)"),
        {"t": T0},
    )
    for n, body in ((1, b"x = 1\n"), (2, b"x = 2\n")):
        conn.execute(
            text(
                "INSERT INTO versions (id, skill_id, number, content_hash, manifest, file_count,"
                " total_bytes, created_at, created_by, status)"
                " VALUES (:id, 1, :n, :h, :m, 1, :size, :t, 'old-cli', 'passed')"
            ),
            {"id": n, "n": n, "h": f"sha256:{n:064d}", "m": j({"name": "greet"}), "size": len(body), "t": T0},
        )
        conn.execute(
            text(
                "INSERT INTO version_files (version_id, path, content, sha256, size)"
                " VALUES (:v, 'skill.py', :c, 'x', :size)"
            ),
            {"v": n, "c": body, "size": len(body)},
        )
        conn.execute(
            text(
                "INSERT INTO evaluations (id, version_id, policy_name, policy_hash, status, verdict,"
                " reasons, report, created_at, finished_at)"
                " VALUES (:id, :v, 'default', 'sha256:policy-1', 'done', 'passed', '[]', :r, :t, :t)"
            ),
            {"id": f"ev-{n}", "v": n, "r": j({"verdict": "passed", "evaluation_id": f"ev-{n}"}), "t": T0},
        )
    # two promotions: 1, then 2 (whose back link is the first)
    for eid, vid, back, before, after in ((1, 1, None, None, 1), (2, 2, 1, 1, 2)):
        conn.execute(
            text(
                "INSERT INTO events (id, skill_id, version_id, actor, action, reason, before, after,"
                " evidence, back_event_id, created_at)"
                " VALUES (:id, 1, :v, 'old-cli', 'promoted', 'seed', :b, :a, :e, :back, :t)"
            ),
            {
                "id": eid,
                "v": vid,
                "back": back,
                "b": j({"version": before, "generation": eid - 1}),
                "a": j({"version": after, "generation": eid}),
                "e": j({"forced": False}),
                "t": T0,
            },
        )
    conn.execute(
        text("UPDATE skills SET active_version_id = 2, generation = 2, pointer_event_id = 2 WHERE id = 1")
    )
    if conn.dialect.name == "postgresql":  # explicit ids above: move the sequences on
        for table in ("skills", "versions", "events"):
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 10)"))


def test_upgrade_from_0001_keeps_data(empty_url):
    engine = _make_engine(empty_url)
    upgrade(engine, "0001")
    with engine.connect() as conn:
        assert current_revision(conn) == "0001"
        assert "provenance" not in {c["name"] for c in inspect(conn).get_columns("versions")}
        conn.rollback()
        with conn.begin():
            _seed_at_0001(conn)
    engine.dispose()

    store = open_store(empty_url)  # migrates to head on open
    try:
        with store.engine.connect() as conn:
            assert current_revision(conn) == head_revision()
            indexes = {i["name"] for i in inspect(conn).get_indexes("evaluations")}
            assert "ix_evaluations_status_created_at" in indexes
        stored = versions.list_versions(store, name="greet")
        assert [(v.number, v.status, v.active, v.provenance) for v in stored] == [
            (1, "passed", False, None),
            (2, "passed", True, None),
        ]
        assert versions.get_version_files(store, name="greet", number=2) == {"skill.py": b"x = 2\n"}
        assert pointers.active_pointer(store, name="greet") == (2, 2)
        assert [e.action for e in audit.history(store, name="greet")] == ["promoted", "promoted"]
        assert evaluations.latest_evaluation(store, name="greet", number=1).id == "ev-1"
        # the old pointer history still drives rollback, and new writes use the new column
        assert pointers.rollback(store, name="greet", actor="t").to_version == 1
        v3, created = versions.create_version(
            store, submission=variant("greet", 3), actor="t", provenance={"via": "test"}
        )
        assert created and v3.number == 3 and v3.provenance == {"via": "test"}
        assert pointers.promote(store, name="greet", number=2, actor="t", policy=make_policy()).generation == 4
    finally:
        store.close()


def test_models_match_migrations(store):
    """The models describe exactly the schema the migrations build."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = compare_metadata(ctx, Base.metadata)
    assert diffs == []


def _opener(url: str, barrier, queue) -> None:  # type: ignore[no-untyped-def]
    try:
        barrier.wait(timeout=60)
        open_store(url).close()
        queue.put("ok")
    except BaseException as exc:
        queue.put(repr(exc))


def test_concurrent_first_opens_migrate_once(empty_url):
    ctx = multiprocessing.get_context("fork")
    n = 4
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_opener, args=(empty_url, barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert results == ["ok"] * n
    store = open_store(empty_url)
    try:
        with store.engine.connect() as conn:
            assert current_revision(conn) == head_revision()
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
        assert versions.list_skills(store) == []
    finally:
        store.close()


def test_open_store_errors(tmp_path):
    with pytest.raises(StoreError, match="unsupported database"):
        open_store("mysql://x@localhost/db")
    with pytest.raises(StoreError, match="invalid database URL"):
        open_store("not a url")
    with pytest.raises(StoreError, match="cannot open the store"):
        open_store("postgresql+psycopg://nobody@127.0.0.1:1/none")
    # a SQLite file under a home that does not exist yet is created
    store = open_store(f"sqlite:///{tmp_path / 'new' / 'home' / 'sandgate.db'}")
    store.close()
    assert (tmp_path / "new" / "home" / "sandgate.db").exists()


def test_migration_0005_backfills_event_evaluation_ids(empty_url):
    """Existing evaluated/promoted events get their evidence's evaluation id as a column."""
    engine = _make_engine(empty_url)
    upgrade(engine, "0004")
    j = json.dumps
    with engine.begin() as conn:
        _seed_at_0001(conn)
        conn.execute(
            text(
                "INSERT INTO events (id, skill_id, version_id, actor, action, reason, before, after,"
                " evidence, created_at) VALUES (3, 1, 2, 'policy:default', 'evaluated', NULL, NULL,"
                " :a, :e, :t)"
            ),
            {"a": j({"version": 2, "verdict": "passed"}), "e": j({"evaluation_id": "ev-2"}), "t": T0},
        )
        conn.execute(
            text("UPDATE events SET evidence = :e WHERE id = 2"),
            {"e": j({"forced": False, "evaluation_id": "ev-2"})},
        )
    upgrade(engine)
    with engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT id, evaluation_id FROM events ORDER BY id")).all())
        indexes = {i["name"] for i in inspect(conn).get_indexes("events")}
    engine.dispose()
    assert rows == {1: None, 2: "ev-2", 3: "ev-2"}
    assert "ix_events_evaluation_id" in indexes
    store = open_store(empty_url)
    try:
        move = audit.promotion_of(store, skill="greet", evaluation_id="ev-2")
        assert move is not None and (move.event_id, move.from_version, move.to_version) == (2, 1, 2)
        assert audit.promotion_of(store, skill="greet", evaluation_id="ev-1") is None
    finally:
        store.close()


def test_new_events_carry_their_evaluation_id(store):
    """evaluated events and the auto-promotion that cites the evaluation are found by the column."""
    from sandgate import lifecycle
    from tests.integration.conftest_store import FakeEvaluate

    r = lifecycle.submit(store, submission=variant("greet", 1), policy=make_policy(mode="auto"), actor="a",
                         evaluate=FakeEvaluate())
    assert r.promoted is not None
    move = audit.promotion_of(store, skill="greet", evaluation_id=r.evaluation.id)
    assert move == r.promoted
    with store.read() as s:
        cited = s.execute(
            text("SELECT action FROM events WHERE evaluation_id = :e ORDER BY id"), {"e": r.evaluation.id}
        ).scalars().all()
    assert cited == ["evaluated", "promoted"]
