"""Each worker's side of ``xksproxy hsm drain/undrain/status`` (see :mod:`.control`).

A task in every worker polls ``control/drains.json`` (every :data:`POLL_S`; a drain is applied
well within the 5 s the command promises), drains or undrains its own member sets to match
(undrain only after the member's probe passes), and writes ``control/members/<pid>.json``, its
view of every member, after each change and every second.  A worker started later (a respawn)
applies the drains at start-up, before it serves a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from xksproxy.runtime.control import ControlPaths, read_drains, write_worker_status

log = logging.getLogger("xksproxy.members")

POLL_S = 0.25
STATUS_EVERY_S = 1.0


class MemberSync:
    def __init__(self, app: Any, paths: ControlPaths) -> None:
        self.app = app
        self.paths = paths
        self.seq = -1
        self._task: asyncio.Task[None] | None = None
        self._undrain_errors: dict[str, str] = {}

    async def apply(self) -> None:
        """Bring this worker's member sets to what drains.json asks for."""
        seq, drained = read_drains(self.paths)
        if seq == self.seq:
            return
        for backend in self.app.backends.values():
            for view in backend.views():
                name = view.name
                if name in drained and view.state != "drained":
                    try:
                        backend.drain(name)
                        log.info("member drained", extra={"fields": {"member": name}})
                    except ValueError as exc:
                        self._undrain_errors[name] = str(exc)
                elif name not in drained and view.state == "drained":
                    result = await backend.undrain(name)
                    if result.ok:
                        self._undrain_errors.pop(name, None)
                        log.info("member back in service", extra={"fields": {"member": name}})
                    else:
                        self._undrain_errors[name] = f"probe failed: {result.error}"
        self.seq = seq
        self.write_status()

    def write_status(self) -> None:
        health = getattr(self.app, "health", None)
        members = []
        for backend_name, backend in self.app.backends.items():
            for v in backend.views():
                row: dict[str, Any] = {
                    "member": v.name,
                    "backend": backend_name,
                    "state": v.state,
                    "health": health.member_status(backend_name, v.name) if health else "UNKNOWN",
                    "outstanding": v.outstanding,
                    "calls": v.calls,
                    "errors": v.errors,
                    "failovers": v.failovers,
                    "last_error": v.last_error,
                }
                if v.name in self._undrain_errors:
                    row["note"] = self._undrain_errors[v.name]
                members.append(row)
        doc = {"pid": os.getpid(), "time": time.time(), "drain_seq": self.seq, "members": members}
        with contextlib.suppress(OSError):
            write_worker_status(self.paths, doc)

    async def _run(self) -> None:
        last_status = 0.0
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self.apply()
                if time.monotonic() - last_status >= STATUS_EVERY_S:
                    self.write_status()
                    last_status = time.monotonic()
            except Exception:  # the channel must survive a bad file or our own bug
                log.exception("member sync failed")

    async def start(self) -> None:
        try:
            self.paths.prepare()
        except OSError as exc:  # serving KMS matters more than the maintenance channel
            log.warning(
                "control directory unusable; `xksproxy hsm` commands will not reach this worker",
                extra={"fields": {"dir": str(self.paths.dir), "error": exc.strerror or str(exc)}},
            )
            return
        await self.apply()
        self._task = asyncio.create_task(self._run(), name="xksproxy-member-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(OSError):
            (self.paths.members / f"{os.getpid()}.json").unlink()


def install(app: Any) -> MemberSync | None:
    """Follow drains for ``app`` (needs ``app.config.path``: the control dir is next to it)."""
    config_path = getattr(app.config, "path", None)
    if config_path is None:
        return None
    control_dir = getattr(app.config, "control_dir", None)
    sync = MemberSync(app, ControlPaths.for_config(Path(config_path), control_dir))
    app.on_startup.append(sync.start)
    app.on_shutdown.append(sync.stop)
    return sync
