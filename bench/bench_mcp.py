"""MCP call overhead: one ``tools/call`` over stdio against a direct ``registry.call`` (same run).

::

    python bench/bench_mcp.py              # 2000 calls each way (after a warm-up)
    python bench/bench_mcp.py --calls 300  # quicker

A temporary SQLite store holds one skill (``add(a: int, b: int) -> int``,
force-promoted). The floor is ``registry.call("add", a=…, b=…)`` in this
process on a registry of that store; the measured path is the SDK's own
client calling the tool on a real ``sandgate mcp`` subprocess over stdio
(argument validation, ``registry.acall`` in a worker thread, JSON-RPC both
ways, structured result), one call at a time. Printed: per-call times
(median, p99) of both and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import anyio  # noqa: E402
from mcp import Client, StdioServerParameters  # noqa: E402
from mcp_store import add, new_store  # noqa: E402

import sandgate  # noqa: E402

ADD = "def run(a: int, b: int) -> int:\n    return a + b\n"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    opts = parser.parse_args()
    n = opts.calls
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        store, url = new_store(tmp_path)
        add(store, "adder", ADD, description="Adds two integers")

        # floor: registry.call in this process
        with sandgate.connect(url, cache_dir=tmp_path / "cache") as registry:
            for i in range(200):
                registry.call("adder", a=i, b=1)
            direct = []
            for i in range(n):
                t0 = time.perf_counter()
                assert registry.call("adder", a=i, b=1) == i + 1
                direct.append(time.perf_counter() - t0)

        env = dict(os.environ, SANDGATE_HOME=str(tmp_path / "home"))
        params = StdioServerParameters(command=str(Path(sys.executable).with_name("sandgate")),
                                       args=["mcp", "--url", url], env=env)
        over_mcp: list[float] = []

        async def run() -> None:
            async with Client(params, read_timeout_seconds=30) as client:
                await client.list_tools()
                for i in range(100):
                    await client.call_tool("adder", {"a": i, "b": 1})
                for i in range(n):
                    t0 = time.perf_counter()
                    r = await client.call_tool("adder", {"a": i, "b": 1})
                    over_mcp.append(time.perf_counter() - t0)
                    assert r.structured_content == {"result": i + 1}, r

        anyio.run(run)

    d_med, m_med = statistics.median(direct), statistics.median(over_mcp)
    print(f"calls: {n} each, one at a time (2 cores, shared machine)")
    print(f"registry.call (floor):   median {d_med * 1e6:8.1f} us   p99 {pct(direct, 0.99) * 1e6:8.1f} us")
    print(f"MCP tools/call (stdio):  median {m_med * 1e6:8.1f} us   p99 {pct(over_mcp, 0.99) * 1e6:8.1f} us")
    print(f"ratio MCP / direct (medians): {m_med / d_med:,.0f}x   "
          f"overhead per call: {(m_med - d_med) * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
