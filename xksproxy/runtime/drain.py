"""Graceful drain on SIGTERM: /ready turns 503 at once, serving goes on for the grace period.

Why: a load balancer only stops sending to an instance after its health check has seen it fail
(HAProxy: ``fall x inter``; an NLB: its unhealthy threshold; Kubernetes: the endpoint removal).
A proxy that closed its listener on SIGTERM would refuse, or cut, the requests still routed to
it in that window. So on SIGTERM the launcher

1. creates the drain flag file (``$XKSPROXY_DRAIN_FILE``, exported to every worker before they
   start) and tells systemd ``STOPPING=1``;
2. workers see the flag (``/ready`` looks at it on every check; a poller a few times a second):
   ``/ready`` answers 503 ``draining``, and HTTP/1.1 answers carry ``Connection: close`` so
   clients reconnect, through the load balancer, to a ready instance;
3. after ``[server] drain_grace_s`` (a second SIGTERM/SIGINT ends it early) the launcher stops
   the server as before: workers finish the requests they have accepted, then exit.

SIGINT (Ctrl-C) stops without the grace period: an operator at a terminal wants the prompt back.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from xksproxy import environment
from xksproxy.runtime import sdnotify
from xksproxy.runtime.stoplatch import StopLatch

POLL_S = 0.1  # how often a worker looks at the flag (and at its own readiness)


class LauncherDrain:
    """The launcher's side: the flag file and the grace period (one per ``serve``)."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        directory = tempfile.mkdtemp(prefix="xksproxy-drain-")
        atexit.register(shutil.rmtree, directory, True)
        self.flag = Path(directory) / "draining"
        os.environ[environment.DRAIN_FILE.name] = str(self.flag)

    def begin(self) -> None:
        """Tell the workers (flag file) and systemd (``STOPPING=1``) that the stop has begun."""
        with contextlib.suppress(OSError):
            self.flag.touch(exist_ok=True)
        sdnotify.stopping(f"draining for up to {self.grace_s:g} s")

    def before_stop(self, latch: StopLatch) -> None:
        """Called once a stop was requested, before the server is told to stop: drain on
        SIGTERM for :attr:`grace_s`, ending early on another stop signal or when serving ended."""
        self.begin()
        if latch.signum != signal.SIGTERM or self.grace_s <= 0:
            return
        seen = latch.count
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline and latch.count == seen and not latch.closed.is_set():
            latch.closed.wait(0.05)


# -- worker side ---------------------------------------------------------------------------
def install(app: Any) -> None:
    """Give ``app`` the launcher's drain flag and a poller that keeps ``app.drain`` current.

    The poller also closes HTTP/1.1 connections while the instance is not ready for another
    reason (HSM down): clients then reconnect to a ready instance through the load balancer.
    """
    from xksproxy.service.readiness import Drain

    app.drain = Drain(environment.DRAIN_FILE.get())
    task: asyncio.Task[None] | None = None

    async def poll() -> None:
        while True:
            await asyncio.sleep(POLL_S)
            with contextlib.suppress(Exception):  # never let the poller die
                app.drain.close_connections = app.not_ready_reason() is not None

    async def start() -> None:
        nonlocal task
        task = asyncio.get_running_loop().create_task(poll(), name="xksproxy-drain")

    async def stop() -> None:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
