"""What key custody costs per request: the key resolver with and without lifecycle documents.

Why: since issue 12 every key operation asks the resolver for the key's lifecycle state, which
lives in the HSM.  The cache (``[custody] state_cache_s``, <= 5 s) must make that nearly free on
the hot path; this measures it against the resolver's pure rules in the same run (ratios, not
absolute times: the machine is shared).

Rows (one Encrypt resolution each, single thread, asyncio):
- ``rules only``: ``KeyResolver.resolve`` without a document (what every request did before);
- ``lookup, cached``: ``KeyResolver.lookup`` with a document in the cache (the steady state);
- ``lookup, ttl 0``: the document read from the pool on every call (``state_cache_s = 0``), on
  :class:`hsm.testing.MemoryPool` (an in-memory read: a real HSM read costs more).

Usage: ``.venv/bin/python loadtest/bench_custody.py [--rounds 5] [--seconds 1.0]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from hsm.testing import MemoryPool
from xksproxy.config import KeystoreConfig
from xksproxy.keys.custody_doc import CustodyDocument, Version
from xksproxy.keys.resolver import KeyResolver
from xksproxy.xks import operations

STORE = KeystoreConfig(
    name="s",
    path_prefix="/s",
    hsm="h",
    regions=frozenset(),
    keys=frozenset({"k"}),
    key_labels={},
    quota_rate=0,
    quota_burst=0,
    disabled_keys=frozenset(),
    enabled=True,
    deny=[],
    credentials=[],
)


async def _rate(call, seconds: float) -> float:
    """Calls per second of the coroutine function ``call`` for about ``seconds``."""
    n, start = 0, time.perf_counter()
    end = start + seconds
    while True:
        for _ in range(200):
            await call()
        n += 200
        now = time.perf_counter()
        if now >= end:
            return n / (now - start)


async def main(rounds: int, seconds: float) -> None:
    pool = MemoryPool("h")
    await pool.start()
    versions = (*(Version(i, None, "retired") for i in range(4)), Version(4, None))
    pool.set_document("k", CustodyDocument(key="k", versions=versions).to_bytes())

    async def source(backend: str, label: str, deadline: float) -> bytes | None:
        return await pool.custody(label, deadline=deadline)

    bare = KeyResolver(STORE, {"h": "health"})
    cached = KeyResolver(STORE, {"h": "health"}, source, ttl_s=5.0)
    uncached = KeyResolver(STORE, {"h": "health"}, source, ttl_s=0.0)
    deadline = time.monotonic() + 3600

    async def rules() -> None:
        bare.resolve("k", operations.ENCRYPT)

    async def lookup_cached() -> None:
        await cached.lookup("k", operations.ENCRYPT, deadline=deadline)

    async def lookup_ttl0() -> None:
        await uncached.lookup("k", operations.ENCRYPT, deadline=deadline)

    rows = {"rules only": rules, "lookup, cached": lookup_cached, "lookup, ttl 0": lookup_ttl0}
    rates: dict[str, list[float]] = {name: [] for name in rows}
    ratios: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(rounds):  # interleaved: every round measures every row
        this = {name: await _rate(fn, seconds) for name, fn in rows.items()}
        for name, rate in this.items():
            rates[name].append(rate)
            ratios[name].append(this["rules only"] / rate)  # cost relative to the rules alone
    print(f"{rounds} interleaved rounds of {seconds} s; median per row")
    print(f"{'row':<16} {'calls/s':>10} {'us/call':>9} {'cost vs rules':>14}")
    for name in rows:
        rate = statistics.median(rates[name])
        print(
            f"{name:<16} {rate:>10,.0f} {1e6 / rate:>9.2f} "
            f"{statistics.median(ratios[name]):>13.2f}x"
        )
    await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.seconds))
