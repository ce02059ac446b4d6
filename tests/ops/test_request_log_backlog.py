"""The request log when stdout stops draining: the request path never waits, lines beyond the
queue are dropped and counted, and the log says so where they are missing."""

from __future__ import annotations

import threading
import time

import orjson

from xksproxy.observe.requestlog import LineWriter, RequestContext


def _finished(i: int, status: int = 200, error: str | None = None) -> RequestContext:
    now = time.monotonic()
    ctx = RequestContext(started=now, deadline=now + 1.0, operation="encrypt", store="demo")
    ctx.key_id, ctx.kms_request_id, ctx.access_key_id = "k1", f"req-{i}", "AKIDEXAMPLE"
    ctx.finish(status, error)
    return ctx


def test_a_stalled_stdout_drops_and_counts_lines_then_says_so():
    writing = threading.Event()
    release = threading.Event()
    chunks: list[bytes] = []

    def stalled_stdout(data: bytes) -> None:
        writing.set()
        release.wait(60)  # bounded: a failing test must not hang the suite
        chunks.append(data)

    drops: list[int] = []
    out = LineWriter(stalled_stdout, max_lines=3)
    out.on_drop = drops.append
    try:
        out.put(_finished(0))
        assert writing.wait(10)  # the writer thread is stuck in its write
        for i in range(1, 7):
            out.put(_finished(i, 404, "KeyNotFoundException"))  # returns at once
        assert out.dropped_total == 3 and drops == [1, 1, 1]
    finally:
        release.set()
    out.flush()
    lines = [orjson.loads(line) for line in b"".join(chunks).splitlines()]
    kinds = [line["log"] for line in lines]
    assert kinds == ["request", "service", "request", "request", "request"]
    assert "3 line(s) dropped" in lines[1]["message"]
    first, second = lines[0], lines[2]
    assert first["kmsRequestId"] == "req-0" and first["outcome"] == "ok"
    assert first["keyStore"] == "demo" and first["accessKeyId"] == "AKIDEXAMPLE"
    assert second["kmsRequestId"] == "req-1" and second["status"] == 404
    assert second["outcome"] == "KeyNotFoundException" and second["latency_ms"] >= 0
    assert isinstance(first["time"], float) and first["time"] > 0
