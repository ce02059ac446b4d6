"""Worker processes end when their launcher dies, even by SIGKILL.

Why: granian and hypercorn workers hold the listening socket themselves. When the ``xksproxy
serve`` process is killed outright (OOM killer, ``kill -9``, a crashed supervisor) nothing tells
its workers, and they went on answering KMS on the port: with the old configuration and
credentials, no reload, no metrics listener, and a port a restarted proxy then had to share
(seen here after a ``kill -9`` of a hung launcher).

How: a daemon thread in each worker notices that its parent changed and sends the worker
SIGTERM, which both servers handle as a normal graceful shutdown. Polling rather than
``PR_SET_PDEATHSIG``: a signal delivered by the kernel at an arbitrary moment (e.g. during
start-up) left granian workers stuck in their own signal handler (2 of 8 tries here). Because a
graceful shutdown can still hang without its parent, ``alarm`` is armed first: SIGALRM's
default action ends the process after :data:`GRACE_S` whatever state it is in.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from xksproxy import environment

POLL_S = 0.25
GRACE_S = 10  # as long as the launchers give a worker to stop


def mark_launcher() -> None:
    """In the launcher, before any worker starts: workers tie themselves to this process."""
    os.environ[environment.LAUNCHER_PID.name] = str(os.getpid())


def tie_to_launcher() -> bool:
    """In a worker: stop when the launcher is gone. True when the watch is running.

    Does nothing outside a launcher (tests building the app in-process).
    """
    launcher = environment.LAUNCHER_PID.get()
    if not launcher or not launcher.isdigit():
        return False
    threading.Thread(
        target=_watch, args=(int(launcher),), name="xksproxy-lifeline", daemon=True
    ).start()
    return True


def _watch(launcher: int) -> None:
    while os.getppid() == launcher:
        time.sleep(POLL_S)
    signal.alarm(GRACE_S)  # backstop first: the graceful path below may hang without a parent
    os.kill(os.getpid(), signal.SIGTERM)
