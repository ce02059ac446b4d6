"""The floor under the issue-16 ratios: the least a Python server can do per Encrypt, served.

Why: the targets "Encrypt+CDIV >= 0.30x /ping" and "Decrypt >= 0.35x /ping" were set from an
estimate of the physical floor (/ping's cost + three HSM calls + SigV4 + JSON, "a ratio near
0.4"). This measures that floor instead of estimating it: a bare RSGI app on the same granian
(same TLS certificate, HTTP/1.1 and HTTP/2, same workers) that does *only* what no XKS proxy can
skip -- read the body, verify SigV4 with our verifier, parse the JSON, decode base64, draw the IV
from an IV buffer, encrypt in the HSM, compute the CDIV, decrypt to check it, answer JSON -- on one
bare PKCS#11 session per worker with no pool, no validation, no admission, no key resolver, no
deadline, no request log, no audit and no metrics. It is *not* a proxy (it checks almost nothing
and must never serve anything); it only prices the floor. The real proxy is measured in the
same run, alternating, with the same h2load replays (``loadtest.bench_http``):

    python -m loadtest.floor                  # 3 rounds, 4 s per replay, default workers
    python -m loadtest.floor --rounds 1 --workers 1 --protocols h1

It prints, per round and server, req/s and server CPU per request of /ping, Encrypt and Decrypt
and the two ratios, then the medians. If the floor's ratio is below a target, no amount of work
on the proxy's own code can meet that target on this machine with this stack.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from loadtest.bench_http import MAX_RUN_S, h2load, make_ciphertext
from loadtest.embedded_server import (
    REPO,
    START_TIMEOUT_S,
    Running,
    embedded_server,
    init_state,
    server_env,
    stop_server,
)
from loadtest.fleet import free_port, get_status
from loadtest.targets import RATIO_GOALS
from loadtest.xks_requests import Target, decrypt_body, prepare, target_from_env

_CONFIG_ENV = "XKSPROXY_FLOOR_CONFIG"
_JSON = [("content-type", "application/json")]
_PING = b'{"status":"ok"}'
OPS = ("ping", "encrypt", "decrypt")


class _Session:
    """One bare PKCS#11 session with its IV buffer (used by one thread at a time)."""

    def __init__(self, mod: Any, token: Any, pin: str) -> None:
        from hsm.gcm import Gcm
        from hsm.ivbuffer import IvBuffer

        self.handle = mod.open_session(token, pin).handle
        self.gcm = Gcm(mod.functions, self.handle)
        self.ivs = IvBuffer()


class FloorApp:
    """The bare RSGI app (one per granian worker); its sessions open in ``__rsgi_init__``.

    With ``mode = "inline"`` (the embedded default) one session serves every request on the
    event loop. With ``mode = "threaded"`` (a network HSM, ``loadtest.network_hsm --floor``) it
    opens ``sessions`` sessions and runs each request's HSM work as *one* job on a thread pool of
    that size: the fewest thread hand-offs any threaded design can make.
    """

    def __init__(self, config_path: str) -> None:
        self.config_path = config_path

    def __rsgi_init__(self, loop: Any) -> None:
        from hsm import keys, module
        from xksproxy.config import load_config

        cfg = load_config(Path(self.config_path))
        hsm_cfg = cfg.hsms[0]
        creds = {c.access_key_id: [c] for c in cfg.keystores[0].credentials}
        self.lookup = lambda akid: creds.get(akid, [])
        self.mod = module.acquire(hsm_cfg.module, hsm_cfg.env)
        token = self.mod.find_token(hsm_cfg.token_label)
        count = hsm_cfg.sessions if hsm_cfg.mode == "threaded" else 1
        self.sessions = [_Session(self.mod, token, hsm_cfg.pin) for _ in range(count)]
        self.key = keys.resolve(self.mod.functions, self.sessions[0].handle, "demo").handle
        self.free: queue.SimpleQueue[_Session] = queue.SimpleQueue()
        for session in self.sessions:
            self.free.put(session)
        self.threads: ThreadPoolExecutor | None = None
        if hsm_cfg.mode == "threaded":
            self.threads = ThreadPoolExecutor(max_workers=count)

    def __rsgi_del__(self, loop: Any) -> None:
        from hsm import module

        if self.threads is not None:
            self.threads.shutdown()
        for session in self.sessions:
            self.mod.functions.C_CloseSession(session.handle)
        module.release(self.mod)

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":
            return
        if scope.method == "GET":
            protocol.response_bytes(200, _JSON, _PING)
            return
        from sigv4 import verify

        body = await protocol()
        headers = scope.headers.items()
        if scope.authority is not None:
            headers.append((":authority", scope.authority))
        verify(
            method=scope.method,
            path=scope.path,
            query=scope.query_string,
            headers=headers,
            body=body,
            lookup=self.lookup,
            now=time.time(),
        )
        doc = orjson.loads(body)
        work = self._encrypt if scope.path.endswith("/encrypt") else self._decrypt
        if self.threads is None:
            answer = work(doc)
        else:
            answer = await asyncio.get_running_loop().run_in_executor(self.threads, work, doc)
        protocol.response_bytes(200, _JSON, orjson.dumps(answer))

    def _encrypt(self, doc: dict[str, Any]) -> dict[str, str]:
        plaintext = base64.b64decode(doc["plaintext"])
        aad = base64.b64decode(doc.get("additionalAuthenticatedData", ""))
        s = self.free.get()
        try:
            iv = s.ivs.take(s.gcm.random_into)
            _, ct, tag = s.gcm.encrypt(self.key, iv, aad, plaintext)
            cdiv = hashlib.sha256(aad + iv + ct + tag).digest()
            if not hmac.compare_digest(s.gcm.decrypt(self.key, iv, aad, ct, tag), plaintext):
                raise RuntimeError("round trip failed")
        finally:
            self.free.put(s)
        b64 = base64.b64encode
        return {
            "authenticationTag": b64(tag).decode(),
            "ciphertext": b64(ct).decode(),
            "initializationVector": b64(iv).decode(),
            "ciphertextDataIntegrityValue": b64(cdiv).decode(),
        }

    def _decrypt(self, doc: dict[str, Any]) -> dict[str, str]:
        b64d = base64.b64decode
        s = self.free.get()
        try:
            plaintext = s.gcm.decrypt(
                self.key,
                b64d(doc["initializationVector"]),
                b64d(doc.get("additionalAuthenticatedData", "")),
                b64d(doc["ciphertext"]),
                b64d(doc["authenticationTag"]),
            )
        finally:
            self.free.put(s)
        return {"plaintext": base64.b64encode(plaintext).decode()}


def create() -> FloorApp:
    """granian factory: ``loadtest.floor:create`` (the config path comes from the environment)."""
    return FloorApp(os.environ[_CONFIG_ENV])


@contextlib.contextmanager
def floor_server(state_dir: Path, workers: int) -> Iterator[Running]:
    """granian serving :class:`FloorApp` on loopback with the state dir's TLS files, stopped
    like the proxy (:func:`~loadtest.embedded_server.stop_server`) however the block ends."""
    from xksproxy.config import load_config

    cfg = load_config(state_dir / "xksproxy.toml")
    port = free_port()
    env = {**server_env(), _CONFIG_ENV: str(cfg.path)}
    cmd = [
        str(Path(sys.executable).with_name("granian")),
        *("--interface", "rsgi", "--factory", "--http", "auto", "--loop", "uvloop"),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)),
        *("--ssl-certificate", str(cfg.tls.cert_file), "--ssl-keyfile", str(cfg.tls.key_file)),
        *("--log-level", "warning", "--no-ws"),
        "loadtest.floor:create",
    ]
    url = f"https://127.0.0.1:{port}"
    with (state_dir / "floor.stderr").open("wb") as err:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while get_status(url + "/ping", timeout=1.0)[0] != 200:
                if proc.poll() is not None or time.monotonic() > deadline:
                    why = (state_dir / "floor.stderr").read_text(errors="replace")[-2000:]
                    raise SystemExit(f"floor server did not start: {why}")
                time.sleep(0.1)
            yield Running(url=url, state_dir=state_dir, pid=proc.pid)
        finally:
            stop_server(proc)


def measure(
    target: Target, server: Running, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """/ping, Encrypt and Decrypt replays of one server: {proto: {op: Figures}}."""
    target = dataclasses.replace(target, base_url=server.url)
    encrypted = make_ciphertext(target)
    out: dict[str, Any] = {}
    for proto in args.protocols:
        out[proto] = {}
        for op in OPS:
            req = prepare(target, op, decrypt_body(encrypted) if op == "decrypt" else None)
            f = h2load(
                target,
                req,
                h1=proto == "h1",
                duration=args.duration,
                clients=32,
                streams=4,
                workdir=workdir,
                server_pid=server.pid,
            )
            if f.non_2xx or f.errors:
                raise SystemExit(
                    f"{server.url} {proto} {op}: {f.non_2xx} non-2xx, {f.errors} errors"
                )
            out[proto][op] = f
    return out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every round, every server (alternated), every protocol and operation: one row each."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        init_state(state)
        os.environ["XKS_STATE_DIR"] = str(state)
        target = target_from_env("https://127.0.0.1")  # the credential; each server's URL later
        for rnd in range(1, args.rounds + 1):
            for name in args.servers:
                if name == "proxy":
                    server: Any = embedded_server(workers=args.workers, state_dir=state, init=False)
                else:
                    server = floor_server(state, args.workers)
                with server as running:
                    figures = measure(target, running, args, Path(tmp))
                for proto, ops in figures.items():
                    for op in OPS:
                        rows.append(
                            {
                                "round": rnd,
                                "server": name,
                                "proto": proto,
                                "op": op,
                                "workers": args.workers,
                                "rps": ops[op].rps,
                                "cpu_us": ops[op].cpu_us,
                                "ratio_to_ping": ops[op].rps / ops["ping"].rps,
                            }
                        )
                    if not args.json:
                        print_round(rows[-len(OPS) :])
    return rows


def print_round(rows: list[dict[str, Any]]) -> None:
    by = {r["op"]: r for r in rows}
    r0 = rows[0]
    print(
        f"| {r0['round']} | {r0['server']} | {r0['proto']} | "
        + " | ".join(f"{by[op]['rps']:,.0f}" for op in OPS)
        + " | "
        + " / ".join(f"{by[op]['cpu_us']:.0f}" for op in OPS)
        + f" | {by['encrypt']['ratio_to_ping']:.2f} | {by['decrypt']['ratio_to_ping']:.2f} |",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.floor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds, servers alternated (1-10)")
    p.add_argument(
        "--duration", type=float, default=4.0, help=f"seconds per replay (≤ {MAX_RUN_S})"
    )
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="workers of each")
    p.add_argument("--protocols", default="h1,h2", help="h1, h2 or both (comma-separated)")
    p.add_argument("--servers", default="proxy,floor", help="proxy, floor or both")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON list of rows (round, server, proto, op, workers, rps, cpu_us, "
        "ratio_to_ping) and nothing else on stdout",
    )
    args = p.parse_args(argv)
    args.protocols = args.protocols.split(",")
    args.servers = args.servers.split(",")
    if not (0 < args.duration <= MAX_RUN_S and 1 <= args.rounds <= 10 and args.workers >= 1):
        p.error(
            f"--duration must be in (0, {MAX_RUN_S}], --rounds in [1, 10], --workers at least 1"
        )
    if shutil.which("h2load") is None:
        p.error("h2load not found (apt-get install nghttp2-client)")
    if set(args.protocols) - {"h1", "h2"} or set(args.servers) - {"proxy", "floor"}:
        p.error("--protocols takes h1 and/or h2, --servers proxy and/or floor")
    if not args.json:
        print(f"workers={args.workers}, 32 in flight, {args.duration:g} s per replay")
        print(
            "| round | server | proto | ping req/s | encrypt req/s | decrypt req/s "
            "| CPU µs/req ping / enc / dec | encrypt / ping | decrypt / ping |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
    rows = run(args)
    if args.json:
        print(json.dumps(rows))
        return 0
    print("\nmedians (all rounds):")
    for name in args.servers:
        for proto in args.protocols:
            for op, goal in RATIO_GOALS.items():
                got = [r for r in rows if (r["server"], r["proto"], r["op"]) == (name, proto, op)]
                ratios = [r["ratio_to_ping"] for r in got]
                med = statistics.median(ratios)
                listed = ", ".join(f"{v:.2f}" for v in ratios)
                print(
                    f"  {name:5} {proto} {op:7} / ping {med:.2f} ({listed}), CPU "
                    f"{statistics.median(r['cpu_us'] for r in got):.0f} µs/req; "
                    f"target {goal:.2f}: {'reached' if med >= goal else 'below'}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
