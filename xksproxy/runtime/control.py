"""The running proxy's maintenance channel: an owner-only Unix socket served by the launcher.

Why the launcher: it is the one process that outlives workers, and it must never initialise
PKCS#11 (workers do, after fork). So the launcher owns the socket, and reaches its workers the
way reload does, through files in a private directory they watch (``member_sync``):

- ``<config dir>/control/`` (0700) holds ``control.sock`` (0600), ``drains.json`` (the members
  the operator drained, with a sequence number; written atomically) and ``members/<pid>.json``
  (each worker's view of its members, rewritten every second and after each change);
- a client must run as the same uid as the proxy: the peer's uid is read with ``SO_PEERCRED``
  and anyone else gets an error and a closed connection (0600 alone would let root's other
  processes and a misconfigured umask through);
- one request per connection: a JSON line ``{"command": "status" | "drain" | "undrain",
  "member": NAME}``, one JSON line back ``{"ok": bool, "error"?: str, "members": [...]}``;
- ``drain`` returns once every live worker reports the member drained (at most
  :data:`APPLY_TIMEOUT_S`); ``undrain`` once every worker probed it and put it back, or reports
  the probe failure (then the drain is restored, nothing half-applied). Both are audited in
  ``[audit] file`` (``kmsOperation`` ``xksproxy:hsm-drain`` / ``xksproxy:hsm-undrain``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xksproxy.config import Config, load_config
from xksproxy.fsutil import atomic_write

log = logging.getLogger("xksproxy.control")

CONTROL_DIR = "control"
#: How long drain/undrain wait for every worker to apply the change.
APPLY_TIMEOUT_S = 5.0
UNDRAIN_TIMEOUT_S = 10.0
#: A worker status file older than this belongs to a worker that is gone or stuck.
STATUS_MAX_AGE_S = 5.0
MAX_REQUEST_BYTES = 4096


@dataclass(frozen=True)
class ControlPaths:
    dir: Path
    socket: Path
    drains: Path
    members: Path

    @classmethod
    def for_config(cls, config_path: Path, control_dir: Path | None = None) -> ControlPaths:
        """``[control] dir`` of the config (default ``control`` next to the config file)."""
        d = control_dir or Path(config_path).resolve().parent / CONTROL_DIR
        return cls(d, d / "control.sock", d / "drains.json", d / "members")

    @classmethod
    def of(cls, config: Config) -> ControlPaths:
        return cls.for_config(config.path, config.control_dir)

    def prepare(self) -> None:
        """Create the private directories (0700), also when they already exist."""
        for d in (self.dir, self.members):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            d.chmod(0o700)


# --------------------------------------------------------------------------- shared state files


def read_drains(paths: ControlPaths) -> tuple[int, set[str]]:
    """(sequence number, drained member names); (0, {}) when nothing was ever drained."""
    try:
        doc = json.loads(paths.drains.read_text())
        return int(doc["seq"]), set(doc["drained"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0, set()


def write_drains(paths: ControlPaths, seq: int, drained: set[str]) -> None:
    atomic_write(
        paths.drains, json.dumps({"seq": seq, "drained": sorted(drained)}).encode(), durable=False
    )


def write_worker_status(paths: ControlPaths, doc: dict[str, Any]) -> None:
    atomic_write(paths.members / f"{os.getpid()}.json", json.dumps(doc).encode(), durable=False)


def live_worker_status(paths: ControlPaths) -> list[dict[str, Any]]:
    """The status documents of workers that are alive and wrote within STATUS_MAX_AGE_S."""
    out = []
    now = time.time()
    for f in sorted(paths.members.glob("*.json")):
        try:
            doc = json.loads(f.read_text())
            pid = int(doc["pid"])
            os.kill(pid, 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                f.unlink()  # a worker that is gone
            continue
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if now - float(doc.get("time", 0)) <= STATUS_MAX_AGE_S:
            out.append(doc)
    return out


# --------------------------------------------------------------------------- the launcher side


class ControlServer:
    """The launcher's socket thread; :meth:`close` at exit."""

    def __init__(self, config_path: Path, control_dir: Path | None = None) -> None:
        self.config_path = Path(config_path)
        self.paths = ControlPaths.for_config(self.config_path, control_dir)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self.paths.prepare()
        path = self.paths.socket
        if path.exists():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # stale: its launcher is gone
            else:
                raise OSError(f"{path}: another xksproxy serves this state directory")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        path.chmod(0o600)
        sock.listen(8)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="xksproxy-control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            with contextlib.suppress(OSError):
                self.paths.socket.unlink()

    def _serve(self) -> None:
        while self._sock is not None:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30.0)
            uid = peer_uid(conn)
            if uid != os.getuid():
                _send(conn, {"ok": False, "error": "refused: not the proxy's owner"})
                log.warning("control: refused a client", extra={"fields": {"uid": uid}})
                return
            try:
                request = _recv(conn)
                with self._lock:  # one change at a time
                    reply = self.handle(request, uid)
            except Exception as exc:  # a bad request must never kill the channel
                reply = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            _send(conn, reply)

    def handle(self, request: dict[str, Any], uid: int) -> dict[str, Any]:
        command = request.get("command")
        config = load_config(self.config_path)
        if command == "status":
            return {"ok": True, "members": status_table(config, self.paths)}
        if command not in ("drain", "undrain"):
            return {"ok": False, "error": f"unknown command {command!r}"}
        member = str(request.get("member", ""))
        if member not in {h.name for h in config.hsms}:
            names = ", ".join(h.name for h in config.hsms)
            return {"ok": False, "error": f"no [[hsm]] member named {member!r} (have: {names})"}
        reply = (self._drain if command == "drain" else self._undrain)(config, member)
        _audit(config, command, member, uid, bool(reply["ok"]))
        return reply

    def _drain(self, config: Config, member: str) -> dict[str, Any]:
        seq, drained = read_drains(self.paths)
        backend = config.backend_of(member)
        peers = [h.name for h in config.members(backend) if h.name != member]
        if member not in drained and all(p in drained for p in peers):
            return {
                "ok": False,
                "error": f"{member} is the last member of backend {backend} in service; "
                "undrain another member first",
            }
        write_drains(self.paths, seq + 1, drained | {member})
        ok, lagging = self._wait(seq + 1, member, {"drained"}, APPLY_TIMEOUT_S)
        reply: dict[str, Any] = {"ok": ok, "members": status_table(config, self.paths)}
        if not ok:
            reply["error"] = f"workers {lagging} did not drain {member} within {APPLY_TIMEOUT_S} s"
        return reply

    def _undrain(self, config: Config, member: str) -> dict[str, Any]:
        seq, drained = read_drains(self.paths)
        write_drains(self.paths, seq + 1, drained - {member})
        ok, lagging = self._wait(seq + 1, member, {"active"}, UNDRAIN_TIMEOUT_S)
        if not ok:  # the probe failed somewhere: keep it drained everywhere, say why
            write_drains(self.paths, seq + 2, drained | {member})
        reply: dict[str, Any] = {"ok": ok, "members": status_table(config, self.paths)}
        if not ok:
            reply["error"] = f"{member} stays drained: its probe did not pass on workers {lagging}"
        return reply

    def _wait(
        self, seq: int, member: str, states: set[str], timeout: float
    ) -> tuple[bool, list[int]]:
        """Wait until every live worker applied ``seq`` and shows ``member`` in ``states``."""
        deadline = time.monotonic() + timeout
        lagging: list[int] = []
        while True:
            lagging = []
            for doc in live_worker_status(self.paths):
                state = next(
                    (m["state"] for m in doc.get("members", []) if m.get("member") == member),
                    None,
                )
                if int(doc.get("drain_seq", 0)) < seq or (
                    state is not None and state not in states
                ):
                    lagging.append(int(doc["pid"]))
            if not lagging or time.monotonic() > deadline:
                return not lagging, lagging
            time.sleep(0.05)


def status_table(config: Config, paths: ControlPaths) -> list[dict[str, Any]]:
    """Every member as the running workers see it (the ``hsm status --json`` rows)."""
    _, drained = read_drains(paths)
    workers = live_worker_status(paths)
    rows = []
    for h in config.hsms:
        views = []
        for doc in workers:
            for m in doc.get("members", []):
                if m.get("member") == h.name:
                    views.append(
                        {"pid": doc["pid"], **{k: v for k, v in m.items() if k != "member"}}
                    )
        states = {v["state"] for v in views}
        health = {v.get("health") for v in views}
        rows.append(
            {
                "member": h.name,
                "backend": config.backend_of(h.name),
                "drained": h.name in drained,
                "state": states.pop() if len(states) == 1 else ("mixed" if states else "unknown"),
                "health": health.pop() if len(health) == 1 else ("mixed" if health else "unknown"),
                "workers": views,
            }
        )
    return rows


def _audit(config: Config, command: str, member: str, uid: int, ok: bool) -> None:
    if config.audit.file is None or config.audit.key is None:
        return
    from xksproxy.observe.audit import append_event

    fields = {
        "kmsOperation": f"xksproxy:hsm-{command}",
        "principal": f"uid:{uid}",
        "token": member,
        "outcome": "ok" if ok else "error",
    }
    try:
        append_event(config.audit.file, config.audit.key, f"hsm-{command}", fields)
    except (OSError, ValueError):
        # The operator's command is answered either way; the log says the record is missing.
        log.error("hsm %s %s: the audit record could not be written", command, member)


def start_launcher(config_path: Path) -> ControlServer | None:
    """Start the control socket for ``config_path``; None (and a warning) if it cannot be."""
    try:
        control_dir = load_config(config_path).control_dir
    except Exception:  # serve already loaded it once; a broken edit since then: default dir
        control_dir = None
    server = ControlServer(config_path, control_dir)
    try:
        server.start()
    except OSError as exc:
        import sys

        print(
            f"xksproxy: WARNING: control socket {server.paths.socket} not started ({exc}); "
            "`xksproxy hsm` commands will not reach this proxy",
            file=sys.stderr,
            flush=True,
        )
        return None
    return server


# --------------------------------------------------------------------------- the client side


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (Linux ``SO_PEERCRED``)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def request(config_path: Path, message: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one request to the proxy serving ``config_path``; raises OSError if none answers."""
    path = ControlPaths.of(load_config(config_path)).socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(path))
        _send(conn, message)
        return _recv(conn)


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(message).encode() + b"\n")


def _recv(conn: socket.socket) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > 16 * 1024 * 1024:
            raise ValueError("reply too long")
    doc = json.loads(data or b"{}")
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc
