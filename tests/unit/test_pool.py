"""The warm pool's bookkeeping over a fake engine (the real one: tests/integration/test_pool.py)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from sandgate.limits import Limits
from sandgate.sandbox import pool as warm_pools
from sandgate.sandbox import reaper
from sandgate.sandbox.runner import CONTROLLER_LABEL, EVALUATION_LABEL, MANAGED_LABEL, POOL_LABEL


class FakeApi:
    """The calls the pool makes, over an in-memory set of containers."""

    def __init__(self) -> None:
        self.image_id = "sha256:one"
        self.containers_: dict[str, dict[str, Any]] = {}
        self.removed: list[str] = []
        self.lock = threading.Lock()

    def create_host_config(self, **kwargs: Any) -> dict[str, Any]:
        return kwargs

    def create_container(self, image: str, **kwargs: Any) -> dict[str, str]:
        cid = uuid.uuid4().hex
        with self.lock:
            self.containers_[cid] = {"Image": self.image_id, "Running": False, "Labels": kwargs["labels"],
                                     "Created": time.time(), "Entrypoint": kwargs.get("entrypoint")}
        return {"Id": cid}

    def start(self, cid: str) -> None:
        self.containers_[cid]["Running"] = True

    def inspect_container(self, cid: str) -> dict[str, Any]:
        c = self.containers_[cid]
        return {"Image": c["Image"], "State": {"Running": c["Running"], "Paused": False}}

    def inspect_image(self, ref: str) -> dict[str, str]:
        return {"Id": self.image_id}

    def remove_container(self, cid: str, force: bool = False, v: bool = False) -> None:
        with self.lock:
            self.containers_.pop(cid, None)
            self.removed.append(cid)

    def containers(self, all: bool = False, filters: Any = None) -> list[dict[str, Any]]:
        wanted = dict(f.split("=", 1) for f in (filters or {}).get("label", []))
        return [{"Id": cid, "Labels": c["Labels"], "Created": c["Created"]} for cid, c in list(self.containers_.items())
                if all_items(c["Labels"], wanted)]


def all_items(labels: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())


class FakeClient:
    def __init__(self) -> None:
        self.api = FakeApi()


def wait_for(predicate: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("timed out")


@pytest.fixture
def client() -> FakeClient:
    return FakeClient()


def make(client: FakeClient, size: int = 2, max_age: float = 60.0) -> warm_pools.WarmPool:
    pool = warm_pools.WarmPool(client, image="img:tag", limits=Limits(), size=size, max_age=max_age)
    wait_for(lambda: len(pool.idle()) == size)
    return pool


def test_each_sandbox_is_handed_out_once_and_replaced_only_when_done(client) -> None:
    pool = make(client)
    try:
        first, second = pool.take("sha256:one"), pool.take("sha256:one")
        assert first and second and first != second
        assert pool.take("sha256:one") is None  # both in use: no third, and no refill yet
        time.sleep(0.2)
        assert pool.idle() == []
        pool.done(first)
        wait_for(lambda: len(pool.idle()) == 1)
        third = pool.take("sha256:one")
        assert third not in (first, second)
        labels = client.api.containers_[third]["Labels"]
        assert labels[MANAGED_LABEL] == "true" and labels[POOL_LABEL] == pool.name
        assert labels[EVALUATION_LABEL].startswith(pool.name) and labels[CONTROLLER_LABEL]
        assert pool.stats["taken"] == 3 and pool.stats["misses"] == 1
    finally:
        pool.close()


def test_old_sandboxes_are_replaced(client) -> None:
    pool = make(client, size=1, max_age=0.3)
    try:
        [old] = pool.idle()
        wait_for(lambda: old in client.api.removed and len(pool.idle()) == 1)
        assert pool.idle() != [old] and pool.stats["expired"] >= 1
    finally:
        pool.close()


def test_a_new_image_behind_the_tag_drains_the_pool(client) -> None:
    pool = make(client)
    try:
        old = pool.idle()
        client.api.image_id = "sha256:two"
        # a caller that resolved the new id gets nothing of the old image
        assert pool.take("sha256:two") is None
        wait_for(lambda: len(pool.idle()) == 2 and not set(pool.idle()) & set(old))
        assert set(old) <= set(client.api.removed)
        assert {client.api.containers_[c]["Image"] for c in pool.idle()} == {"sha256:two"}
        assert pool.take("sha256:one") is None
        assert pool.take("sha256:two") is not None
    finally:
        pool.close()


def test_a_dead_sandbox_is_not_handed_out(client) -> None:
    pool = make(client, size=1)
    try:
        [dead] = pool.idle()
        client.api.containers_[dead]["Running"] = False
        assert pool.take("sha256:one") is None
        assert dead in client.api.removed and pool.stats["dead"] == 1
        wait_for(lambda: len(pool.idle()) == 1)
    finally:
        pool.close()


def test_close_drains_and_stops_refilling(client) -> None:
    pool = make(client)
    idle = pool.idle()
    pool.close()
    assert set(idle) <= set(client.api.removed)
    time.sleep(0.2)
    assert client.api.containers_ == {}


def test_the_manager_keeps_one_pool_per_image_and_limits(client) -> None:
    manager = warm_pools.PoolManager(size=1, max_age=60, max_pools=2)
    try:
        a = manager.pool(client, image="img:tag", limits=Limits())
        assert manager.pool(client, image="img:tag", limits=Limits()) is a
        b = manager.pool(client, image="img:tag", limits=Limits(runtime="runsc"))
        assert b is not a
        c = manager.pool(client, image="img:tag", limits=Limits(memory_mb=256))  # evicts the oldest: a
        assert manager.pools() == [b, c]
        wait_for(lambda: len(c.idle()) == 1)
        taken = manager.take(client, image="img:tag", image_id="sha256:one", limits=Limits(memory_mb=256))
        assert taken is not None
        client.api.remove_container(taken)  # what the evaluation's run does
        manager.done(taken)
        wait_for(lambda: len(c.idle()) == 1)
    finally:
        manager.close()
    assert manager.pool(client, image="img:tag", limits=Limits()) is None
    wait_for(lambda: client.api.containers_ == {})


def test_a_pool_without_the_mutation_server_is_its_own_and_tells_the_harness(client) -> None:
    from sandgate.sandbox.runner import HARNESS_ENTRYPOINT, NO_MUTATION_SERVER, harness_args

    manager = warm_pools.PoolManager(size=1, max_age=60)
    try:
        full = manager.pool(client, image="img:tag", limits=Limits(), harness_argv=harness_args(mutation=True))
        lean = manager.pool(client, image="img:tag", limits=Limits(), harness_argv=harness_args(mutation=False))
        assert full is not lean and full is manager.pool(client, image="img:tag", limits=Limits())
        wait_for(lambda: len(full.idle()) == len(lean.idle()) == 1)
        taken = manager.take(client, image="img:tag", image_id="sha256:one", limits=Limits(),
                             harness_argv=harness_args(mutation=False))
        assert taken is not None
        assert client.api.containers_[taken]["Entrypoint"] == [*HARNESS_ENTRYPOINT, NO_MUTATION_SERVER]
        (other,) = [cid for cid in client.api.containers_ if cid != taken]
        assert client.api.containers_[other]["Entrypoint"] is None  # the image's own: the harness, in full
        manager.done(taken)
    finally:
        manager.close()


def test_the_harness_entrypoint_is_the_images() -> None:
    import json
    from pathlib import Path

    from sandgate.sandbox.runner import HARNESS_ENTRYPOINT

    dockerfile = Path(__file__).resolve().parents[2] / "sandbox_images" / "python" / "Dockerfile"
    (line,) = [x for x in dockerfile.read_text().splitlines() if x.startswith("ENTRYPOINT ")]
    assert tuple(json.loads(line.removeprefix("ENTRYPOINT "))) == HARNESS_ENTRYPOINT


def test_enable_with_size_zero_is_no_pool() -> None:
    assert warm_pools.enable(size=0, max_age=60) is None
    assert warm_pools.current() is None


def test_the_reaper_spares_a_live_controllers_pool_by_age_not_a_dead_ones(client) -> None:
    pool = make(client, size=1)
    pool.close()  # stop its thread; put back containers to reap by hand
    api = client.api
    live = api.create_container("img", labels={MANAGED_LABEL: "true", CONTROLLER_LABEL: "me:1",
                                               EVALUATION_LABEL: "pool-x-1", POOL_LABEL: "pool-x"})["Id"]
    dead = api.create_container("img", labels={MANAGED_LABEL: "true", CONTROLLER_LABEL: "gone:2",
                                               EVALUATION_LABEL: "pool-y-1", POOL_LABEL: "pool-y"})["Id"]
    plain = api.create_container("img", labels={MANAGED_LABEL: "true", CONTROLLER_LABEL: "me:1",
                                                EVALUATION_LABEL: "ev-1"})["Id"]

    def alive(controller: str | None, created: float | None) -> bool | None:
        return controller == "me:1"

    reaped = reaper.reap(client, alive=alive, max_age=10, held=lambda s: False, now=time.time() + 3600)
    gone = {cid for r in reaped for cid in r.removed}
    assert gone == {dead, plain}
    assert live in api.containers_
