"""systemd's readiness protocol (``sd_notify``) without libsystemd: stdlib only.

Why: ``deploy/systemd/xksproxy.service`` runs ``Type=notify``, so systemd considers the proxy
started only when the launcher says ``READY=1`` - after a worker really answers on the socket,
not when the process exists. Load balancers and ``After=xksproxy.service`` units then see a
proxy that can serve. Outside systemd (no ``$NOTIFY_SOCKET``) every call is a cheap no-op that
returns False, so callers never need to know how they were started.

Protocol (``sd_notify(3)``): one datagram of newline-separated ``VAR=value`` assignments to the
``AF_UNIX`` ``SOCK_DGRAM`` socket named by ``$NOTIFY_SOCKET``. A name starting with ``@`` is a
Linux abstract socket (the ``@`` stands for a leading NUL byte). With ``NotifyAccess=main`` only
the main process (the launcher) may notify: workers must not.
"""

from __future__ import annotations

import os
import socket
import time

ENV_SOCKET = "NOTIFY_SOCKET"

_claimed: str | None = None  # the launcher's address once claim() took it out of the environment


def claim() -> bool:
    """In the launcher, before any worker starts: keep ``$NOTIFY_SOCKET`` for this process only.

    The variable is removed from the environment (workers, spawned later, inherit it otherwise
    and could notify on their own); later :func:`notify` calls in this process still use it.
    True when there is a socket to notify.
    """
    global _claimed
    name = os.environ.pop(ENV_SOCKET, None)
    if name:
        _claimed = name
    return bool(_claimed)


def _address(name: str) -> str | bytes | None:
    """The socket address for ``$NOTIFY_SOCKET``; None when it is not a Unix socket path."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()  # abstract namespace
    if name.startswith("/"):
        return name
    return None  # e.g. "vsock:..." (VMs): not supported here


def notify(state: str, *, unset_environment: bool = False) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; True when a datagram was sent.

    False when not under systemd (``$NOTIFY_SOCKET`` unset or not a Unix socket) or when the
    send failed: readiness reporting must never take the proxy down. ``unset_environment``
    removes ``$NOTIFY_SOCKET`` afterwards, so child processes started later cannot notify.
    """
    name = os.environ.get(ENV_SOCKET, "") or _claimed or ""
    if unset_environment:
        os.environ.pop(ENV_SOCKET, None)
    address = _address(name) if name else None
    if address is None or not state:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def ready(status: str | None = None) -> bool:
    """``READY=1``: start-up finished, the service accepts requests (once, after listening)."""
    return notify(_with_status("READY=1", status))


def stopping(status: str | None = None) -> bool:
    """``STOPPING=1``: a graceful stop (drain) has begun."""
    return notify(_with_status("STOPPING=1", status))


def reloading(status: str | None = None) -> bool:
    """``RELOADING=1`` with ``MONOTONIC_USEC`` (systemd >= 253 ``Type=notify-reload`` needs the
    timestamp to tell this reload from an earlier one). Send :func:`ready` when the reload is
    done, as ``sd_notify(3)`` asks."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(_with_status(f"RELOADING=1\nMONOTONIC_USEC={usec}", status))


def status(text: str) -> bool:
    """``STATUS=...``: a one-line free-form state shown by ``systemctl status``."""
    return notify(_with_status("", text))


def _with_status(assignments: str, status: str | None) -> str:
    if status is None:
        return assignments
    line = "STATUS=" + status.replace("\n", " ")
    return f"{assignments}\n{line}" if assignments else line
