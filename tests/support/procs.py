"""Run the product as separate processes, the way an operator does: one copy for every test area.

Why shared: the CLI, ops, conformance and transport tests all start ``python -m xksproxy`` (or a
launcher) in a subprocess and wait for a line on its stdout. Each used to carry its own port
picker, environment recipe and stdout pump; they differed only in what they kept. Nothing here
imports the product, so the black-box conformance suite can use it too.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def product_env(
    extra: Mapping[str, str] | None = None, *, drop: Iterable[str] = ()
) -> dict[str, str]:
    """This environment with the repository first on ``PYTHONPATH``, ``drop`` removed, ``extra``
    set: a child imports this checkout's packages whether or not they are installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    for name in drop:
        env.pop(name, None)
    env.update(extra or {})
    return env


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m xksproxy ARGS`` in a subprocess (its own PKCS#11 module instance, like a real
    operator shell); ``env`` is the whole environment (default :func:`product_env`)."""
    return subprocess.run(
        [sys.executable, "-m", "xksproxy", *args],
        env=dict(env) if env is not None else product_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class StdoutLines:
    """A daemon thread reads a child's text stream into a queue, so a test can wait for a line
    with a timeout instead of blocking on ``readline`` (and a child's pipe never fills up).

    Lines are kept without their newline: ``seen`` those consumed by :meth:`wait_for`, ``all``
    every line read so far (it keeps growing while the child runs)."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None, "start the process with stdout=subprocess.PIPE, text=True"
        self._q: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.all: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        with stream:  # closed at EOF here, not by the garbage collector (a ResourceWarning)
            for line in stream:
                self.all.append(line.rstrip("\n"))
                self._q.put(self.all[-1])
        self._q.put(None)

    def wait_for(self, needle: str, timeout: float) -> str:
        """The first further line containing ``needle``. Raises ``TimeoutError`` when none came
        within ``timeout`` seconds, ``EOFError`` when the stream ended first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no {needle!r} line within {timeout} s") from None
            if line is None:
                raise EOFError(f"the process ended before a {needle!r} line")
            self.seen.append(line)
            if needle in line:
                return line
