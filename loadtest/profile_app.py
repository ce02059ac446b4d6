"""Per-request cost of the ASGI app itself, without any server: µs/op per operation + a profile.

Why: a server benchmark says *that* Encrypt is slower than /ping, not *where* the time goes. This
drives ``xksproxy.runtime.factory:create_app`` in-process (lifespan, HSM pools, observers: the real
thing, on a throw-away embedded state dir) with pre-signed requests and prints µs per call and, with
``--profile OP``, the top functions by cumulative and own time.

    python -m loadtest.profile_app             # µs/op: ping, health, metadata, encrypt, decrypt
    python -m loadtest.profile_app --profile encrypt --count 5000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.embedded_server import init_state
from loadtest.xks_requests import Prepared, decrypt_body, prepare, target_from_env
from xksproxy import environment

HOST = "127.0.0.1:8443"
REPORT = sys.stdout  # figures go here; fd 1 (the app's request log) goes to /dev/null


def scope_of(req: Prepared) -> dict:
    headers = [(b"host", HOST.encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in req.headers.items()]
    headers.append((b"content-length", str(len(req.body)).encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": req.method,
        "scheme": "https",
        "path": req.path,
        "raw_path": req.path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8443),
    }


async def call(app: Any, req: Prepared) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []
    body_msg = {"type": "http.request", "body": req.body, "more_body": False}

    async def receive() -> dict[str, Any]:
        return body_msg

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    await app(scope_of(req), receive, send)
    return sent[0]["status"], sent[1].get("body", b"")


async def lifespan(
    app: Any,
) -> tuple[asyncio.Queue[dict[str, Any]], asyncio.Queue[dict[str, Any]], asyncio.Task[None]]:
    q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await q.put({"type": "lifespan.startup"})
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, q.get, out.put)
    )
    msg = await out.get()
    if msg["type"] != "lifespan.startup.complete":
        raise SystemExit(f"startup failed: {msg}")
    return q, out, task


def _qualname(fn: object) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


async def amain(args: argparse.Namespace, state: Path) -> None:
    os.environ[environment.CONFIG.name] = str(state / "xksproxy.toml")
    os.environ["XKS_STATE_DIR"] = str(state)
    from xksproxy.runtime.factory import create_app

    app = create_app()
    if args.no_observers:  # what the request log, audit and metrics cost per request
        app.observers.clear()
        app.before_answer = None  # the audit's hand-off of Encrypt/Decrypt
    for name in args.drop_observer or ():
        app.observers[:] = [o for o in app.observers if name not in _qualname(o)]
        if app.before_answer is not None and name in _qualname(app.before_answer):
            app.before_answer = None
    hooks = [*app.observers, *([app.before_answer] if app.before_answer else [])]
    print("observers: " + ", ".join(_qualname(o) for o in hooks), file=REPORT)
    q, _out, task = await lifespan(app)
    target = target_from_env(f"https://{HOST}")
    enc = prepare(target, "encrypt")
    status, body = await call(app, enc)
    assert status == 200, body
    reqs = {
        "ping": prepare(target, "ping"),
        "health": prepare(target, "health"),
        "metadata": prepare(target, "metadata"),
        "encrypt": enc,
        "decrypt": prepare(target, "decrypt", decrypt_body(json.loads(body))),
    }
    for op, req in reqs.items():
        for _ in range(200):
            await call(app, req)
        t0 = time.perf_counter()
        for _ in range(args.count):
            status, _b = await call(app, req)
        dt = time.perf_counter() - t0
        print(
            f"{op:9s} {dt / args.count * 1e6:8.1f} µs/op  (status {status})",
            file=REPORT,
            flush=True,
        )
    if args.profile:
        req = reqs[args.profile]
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.count):
            await call(app, req)
        prof.disable()
        if args.dump:
            prof.dump_stats(args.dump)
        for key in ("cumulative", "tottime"):
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats(key).print_stats(args.top)
            print(s.getvalue(), file=REPORT, flush=True)
    await q.put({"type": "lifespan.shutdown"})
    await task


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.profile_app",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--count", type=int, default=3000)
    p.add_argument(
        "--dump", metavar="FILE", help="with --profile: also write the raw pstats data to FILE"
    )
    p.add_argument("--profile", choices=["ping", "health", "metadata", "encrypt", "decrypt"])
    p.add_argument("--top", type=int, default=25)
    p.add_argument(
        "--state-dir",
        type=Path,
        help="an existing (or new) state dir, e.g. with an edited xksproxy.toml",
    )
    p.add_argument(
        "--drop-observer",
        action="append",
        metavar="NAME",
        help="drop observers whose module.qualname contains NAME (repeatable)",
    )
    p.add_argument(
        "--no-observers",
        action="store_true",
        help="drop the app's observers (request log, audit, metrics) to price them",
    )
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        state = args.state_dir or Path(tmp) / "state"
        init_state(state)
        # The request log goes to stdout; send it where a log shipper would (not the terminal).
        global REPORT
        REPORT = os.fdopen(os.dup(1), "w")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        asyncio.run(amain(args, state))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
