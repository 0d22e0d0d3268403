"""sandgate.registry.evidence: the collector, without a store (a list as the sink)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from sandgate.registry.core import TIME_EVERY, _Loaded, _run
from sandgate.registry.evidence import MAX_SAMPLE_BYTES, Evidence


class M:
    name, number, content_hash, entrypoint, is_async = "g", 1, "sha256:" + "0" * 64, "s:r", False
    source = None

    @staticmethod
    def function(x: int = 0) -> int:
        if x < 0:
            raise ValueError("negative")
        return x


def loaded(ev: Evidence, generation: int = 7, sample: int = 0) -> _Loaded:
    return _Loaded(M(), ev.recorder("g", 1, generation, sample))  # type: ignore[arg-type]


def test_counts_are_exact_and_grouped_by_version_and_generation() -> None:
    sent: list[dict[str, Any]] = []
    ev = Evidence(sent.append, start=False)
    v = loaded(ev)
    for i in range(1000):
        _run(v, (i,), {})
    for _ in range(3):
        with pytest.raises(ValueError):
            _run(v, (-1,), {})
    assert ev.flush(1)
    (report,) = [r for b in sent for r in b["reports"]]
    assert (report["skill"], report["version"], report["generation"]) == ("g", 1, 7)
    assert report["calls"] == 1003 and report["errors"] == 3 and report["error_types"] == {"ValueError": 3}
    timed = sum(report["latency"].values())
    assert 1003 // TIME_EVERY <= timed <= 1003 // TIME_EVERY + 4  # one in TIME_EVERY calls is timed (+ failures)
    assert ev.stats()["totals"] == {"g@1": {"calls": 1003, "errors": 3, "fallbacks": 0}}


def test_concurrent_callers_lose_no_count() -> None:
    sent: list[dict[str, Any]] = []
    ev = Evidence(sent.append, interval=0.01)  # the collector swaps all the time meanwhile
    v = loaded(ev)

    def spin() -> None:
        for i in range(20_000):
            _run(v, (i,), {})

    threads = [threading.Thread(target=spin) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ev.close()
    assert sum(r["calls"] for b in sent for r in b["reports"]) == 80_000


def test_a_failing_sink_keeps_the_batch_unchanged_and_retries() -> None:
    sent: list[dict[str, Any]] = []
    down = [True]

    def sink(batch: dict[str, Any]) -> None:
        if down[0]:
            raise OSError("store unreachable")
        sent.append(batch)

    ev = Evidence(sink, start=False)
    v = loaded(ev)
    for i in range(10):
        _run(v, (i,), {})
    ev.cycle(final=True)
    ids = [b["batch_id"] for b in ev._queue]
    assert len(ids) == 1 and ev.stats()["pending_calls"] == 10 and "unreachable" in ev.stats()["last_error"]
    down[0] = False
    assert ev.flush(1)
    assert [b["batch_id"] for b in sent] == ids  # the same batch (same id: the store can tell a re-send)


def test_unsent_batches_are_bounded() -> None:
    ev = Evidence(lambda b: (_ for _ in ()).throw(OSError("down")), start=False, max_batches=3)
    v = loaded(ev)
    for _ in range(6):
        _run(v, (1,), {})
        ev._next_send = 0.0
        ev.cycle(final=True)
    assert len(ev._queue) == 3 and ev.dropped_calls == 3


def test_close_never_waits_for_a_store_that_hangs() -> None:
    gate = threading.Event()
    ev = Evidence(lambda b: gate.wait(30), interval=0.01)
    v = loaded(ev)
    _run(v, (1,), {})
    time.sleep(0.1)  # the collector is now stuck in the sink
    t0 = time.monotonic()
    ev.close(timeout=0.2)
    assert time.monotonic() - t0 < 1.0
    gate.set()


def test_samples_are_capped_json_copies() -> None:
    sent: list[dict[str, Any]] = []
    ev = Evidence(sent.append, start=False)
    v = loaded(ev, sample=2)
    arg = {"k": [1]}

    def fn(x: Any) -> Any:
        return x

    v.fn = fn
    _run(v, (arg,), {})
    arg["k"].append(2)  # a later mutation does not change the sample
    _run(v, (object(),), {})
    _run(v, ("x" * (MAX_SAMPLE_BYTES + 1),), {})  # over the cap: not sampled at all
    ev.flush(1)
    samples = sent[0]["reports"][0]["samples"]
    assert samples[0] == {"input": {"args": [{"k": [1]}], "kwargs": {}}, "output": {"k": [1]}}
    assert "$unserialisable" in samples[1]["input"]
    assert len(samples) == 2


def test_no_sink_keeps_only_totals() -> None:
    ev = Evidence(None, start=False)
    v = loaded(ev)
    _run(v, (1,), {})
    assert ev.flush(0)
    assert ev.stats()["totals"]["g@1"]["calls"] == 1
