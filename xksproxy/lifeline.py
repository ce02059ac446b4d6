"""Worker processes end when their launcher dies, even by SIGKILL.

Why: granian and hypercorn workers hold the listening socket themselves. When the ``xksproxy
serve`` process is killed outright (OOM killer, ``kill -9``, a crashed supervisor) nothing tells
its workers, and they went on answering KMS on the port: with the old configuration and
credentials, no reload, no metrics listener, and a port a restarted proxy then had to share
(seen here after a ``kill -9`` of a hung launcher). On Linux each worker asks the kernel for
SIGTERM when its parent goes (``PR_SET_PDEATHSIG``), which both servers handle as a normal
shutdown. Elsewhere this is a no-op.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

ENV_LAUNCHER_PID = "XKSPROXY_LAUNCHER_PID"
_PR_SET_PDEATHSIG = 1


def mark_launcher() -> None:
    """In the launcher, before any worker starts: workers tie themselves to this process."""
    os.environ[ENV_LAUNCHER_PID] = str(os.getpid())


def tie_to_launcher() -> bool:
    """In a worker: get SIGTERM when the launcher exits. True when the tie is in place.

    Does nothing outside a launcher (tests building the app in-process) or off Linux. The
    kernel sends the signal when the *thread* that forked us ends; both launchers start
    workers from their main thread, which lives as long as the process.
    """
    launcher = os.environ.get(ENV_LAUNCHER_PID)
    if not launcher or not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        return False
    if str(os.getppid()) != launcher:  # it died before the tie was made
        os.kill(os.getpid(), signal.SIGTERM)
    return True
