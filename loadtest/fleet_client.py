"""The fleet and soak load client: pre-signed XKS requests over HTTP/1.1 keep-alive, like KMS.

Why not wrk/h2load for the events: the fleet run must say *when* each request was sent and
whether it failed, to count failures per event (a SIGTERM, a SIGKILL) and to show that none
happen after the load balancer's check interval. Each request is recorded as (send time,
latency, outcome); :func:`window` summarises any time range.

Connections behave like a well-behaved KMS client: a response with ``Connection: close`` (what
a draining proxy sends) ends the connection after that response and the next request goes on a
new one, through the load balancer, to a ready instance; this is *not* a failure. A request that
gets no complete answer (reset, EOF, timeout) or a non-200 status is a failure; the connection
is then replaced. No request is retried (KMS retries once; counting raw failures is stricter).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field

from loadtest.xks_requests import Target, decrypt_body, prepare

REQUEST_TIMEOUT_S = 5.0
MIX = (("encrypt", 60), ("decrypt", 35), ("metadata", 4), ("health", 1))


@dataclass
class Record:
    sent: float  # time.monotonic() when the request was sent
    latency_s: float  # from sending to the answer
    outcome: str  # "ok", an HTTP status ("503"), or an exception name ("connect OSError")
    queued_s: float = 0.0  # open loop: how late it was sent after its due time

    @property
    def response_s(self) -> float:
        """What a caller on the schedule saw: from the due time (open loop) to the answer, so a
        stalled connection cannot hide its backlog by starting its next request late."""
        return self.queued_s + self.latency_s

    @property
    def ended(self) -> float:
        return self.sent + self.latency_s


@dataclass
class Load:
    """What a run recorded, plus the connection churn (reconnects are not failures)."""

    records: list[Record] = field(default_factory=list)
    reconnects: int = 0
    connect_failures: int = 0

    def failures(
        self, start: float = -math.inf, end: float = math.inf, *, deadline_misses: bool = True
    ) -> list[Record]:
        """Failed requests that *ended* in [start, end) (a request in flight at a kill ends
        after it). ``deadline_misses=False`` leaves out 503 DependencyTimeoutException: the
        proxy answered, past its latency budget (a starved CPU), not a lost request."""
        return [
            r
            for r in self.records
            if r.outcome != "ok"
            and start <= r.ended < end
            and (deadline_misses or r.outcome != DEADLINE_MISS)
        ]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class Window:
    requests: int
    failures: int
    kinds: dict[str, int]
    p50_ms: float
    p99_ms: float
    rate: float


def window(load: Load, start: float, end: float) -> Window:
    """Requests that ended in [start, end): count, failures by kind, p50/p99 of the successful
    ones."""
    rs = [r for r in load.records if start <= r.ended < end]
    ok = [r.response_s * 1000.0 for r in rs if r.outcome == "ok"]
    kinds = Counter(r.outcome for r in rs if r.outcome != "ok")
    span = max(1e-9, end - start)
    return Window(
        len(rs), sum(kinds.values()), dict(kinds), percentile(ok, 0.5), percentile(ok, 0.99),
        len(rs) / span,
    )  # fmt: skip


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def close(self) -> None:
        """Close and wait for it (bounded): an SSL transport left to the garbage collector
        is an unclosed socket (a ResourceWarning, an error under the test suite's filters)."""
        with contextlib.suppress(Exception):
            self.writer.close()
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()


async def _open(host: str, port: int, ctx: ssl.SSLContext | None) -> _Conn:
    reader, writer = await asyncio.open_connection(
        host, port, ssl=ctx, server_hostname="localhost" if ctx else None
    )
    return _Conn(reader, writer)


DEADLINE_MISS = "503 DependencyTimeoutException"


def _error_name(body: bytes) -> str:
    """The XKS ``errorName`` of an error body ("" when there is none)."""
    try:
        name = json.loads(body).get("errorName", "")
    except (ValueError, AttributeError):
        return ""
    return name if isinstance(name, str) else ""


async def _request(conn: _Conn, raw: bytes) -> tuple[int, bool, bytes]:
    """(status, server asked to close, body) for one request on ``conn``."""
    conn.writer.write(raw)
    head = await conn.reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, close = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    body = await conn.reader.readexactly(length) if length else b""
    return status, close, body


async def presign(target: Target, ctx: ssl.SSLContext | None, n: int) -> dict[str, list[bytes]]:
    """Pre-signed raw requests per operation; decrypts replay ciphertexts of real Encrypts
    (made through ``target``, so every fleet member can decrypt them: one shared token)."""
    hostport = target.base_url.split("://", 1)[1]
    host, port = hostport.rsplit(":", 1)
    conn = await _open(host.strip("[]"), int(port), ctx)
    pools: dict[str, list[bytes]] = {"encrypt": [], "decrypt": [], "metadata": [], "health": []}
    try:
        for _ in range(n):
            enc = prepare(target, "encrypt")
            pools["encrypt"].append(enc.http11(target.host))
            status, close, body = await _request(conn, enc.http11(target.host))
            if status != 200:
                raise SystemExit(f"encrypt for the decrypt pool failed: {status} {body[:200]!r}")
            dec = prepare(target, "decrypt", decrypt_body(json.loads(body)))
            pools["decrypt"].append(dec.http11(target.host))
            if close:
                await conn.close()
                conn = await _open(host.strip("[]"), int(port), ctx)
        for op in ("metadata", "health"):
            pools[op] = [prepare(target, op).http11(target.host) for _ in range(max(1, n // 10))]
    finally:
        await conn.close()
    return pools


def schedule(pools: dict[str, list[bytes]], n: int, seed: int = 1) -> list[tuple[str, bytes]]:
    """``n`` pre-signed requests in the KMS mix (Encrypt 60 %, Decrypt 35 %, metadata, health)."""
    rng = random.Random(seed)
    ops = [op for op, w in MIX for _ in range(w)]
    counters: Counter[str] = Counter()
    out = []
    for _ in range(n):
        op = rng.choice(ops)
        pool = pools[op]
        out.append((op, pool[counters[op] % len(pool)]))
        counters[op] += 1
    return out


async def run(
    url: str,
    ctx: ssl.SSLContext | None,
    requests: list[tuple[str, bytes]],
    *,
    connections: int,
    duration_s: float,
    rate: float | None = None,
    stop: asyncio.Event | None = None,
    load: Load | None = None,
) -> Load:
    """Send ``requests`` (cycled) on ``connections`` keep-alive connections for ``duration_s``
    (or until ``stop`` is set): closed loop, or open loop at ``rate`` req/s in total."""
    hostport = url.split("://", 1)[1]
    host, port = hostport.rsplit(":", 1)
    load = load or Load()
    end = time.monotonic() + duration_s
    start = time.monotonic()
    counter = 0

    def done() -> bool:
        return time.monotonic() >= end or (stop is not None and stop.is_set())

    async def worker() -> None:
        nonlocal counter
        conn: _Conn | None = None
        while not done():
            i = counter
            counter += 1
            due = start + i / rate if rate else None
            if due is not None:
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if done():
                    break
            if conn is None:
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT_S):
                        conn = await _open(host.strip("[]"), int(port), ctx)
                except (OSError, TimeoutError, ssl.SSLError) as exc:
                    # the request this slot was for is lost, and counts as a failure
                    load.connect_failures += 1
                    now = time.monotonic()
                    load.records.append(Record(now, 0.0, f"connect {type(exc).__name__}"))
                    await asyncio.sleep(0.01)
                    continue
            _op, raw = requests[i % len(requests)]
            sent = time.monotonic()
            queued = max(0.0, sent - due) if due is not None else 0.0
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    status, close, body = await _request(conn, raw)
            except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
                load.records.append(
                    Record(sent, time.monotonic() - sent, type(exc).__name__, queued)
                )
                await conn.close()
                conn = None
                continue
            outcome = "ok" if status == 200 else f"{status} {_error_name(body)}".strip()
            load.records.append(Record(sent, time.monotonic() - sent, outcome, queued))
            if close:
                load.reconnects += 1
                await conn.close()
                conn = None
        if conn is not None:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return load
