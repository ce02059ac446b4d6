"""Starting a pool safely among sibling processes, and knowing when a fork made it unusable.

Why a module of its own: both concerns are about *processes*, not sessions. N server workers start
at the same moment and each initialises the module, finds the token and logs in; with SoftHSMv2 (a
file-backed token) that raced ("no token labelled ...", CKR_GENERAL_ERROR from C_Login). Starts are
therefore serialised across processes with a lock file per (module, token, environment) and
retried with back-off (:func:`start_serialised`). And PKCS#11 state never survives ``fork()``: a
pool records :func:`forks_seen` when it starts and refuses to work once the counter moved.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Final

from . import _ck
from .errors import HsmFailure, HsmUnavailable
from .types import HsmConfig

log = logging.getLogger("hsm.pool")

#: How long a failing start is retried (while sibling workers start too).
START_RETRY_S: Final = 5.0
_FIRST_DELAY_S: Final = 0.05
_MAX_DELAY_S: Final = 1.0

_forks = 0  # bumped in every child after fork(): a pool from before the fork is unusable


def _after_fork_in_child() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


def forks_seen() -> int:
    """How many forks this process descends from since ``hsm`` was imported (compare, not read)."""
    return _forks


def lock_path(config: HsmConfig) -> str:
    """The lock file of this (module, token, environment).

    Named by a digest so that unrelated tokens never wait on each other. It lives with the
    token when there is a token directory to live in, so it goes away with it and never piles
    up in a shared directory (one file per token ever used): beside the SoftHSMv2 configuration
    (``SOFTHSM2_CONF`` of the pool, else of the process; for the embedded default that is the
    state directory), else in ``$RUNTIME_DIRECTORY`` (systemd's ``RuntimeDirectory=``, which the
    shipped unit sets; removed when the service stops), else in ``$XDG_RUNTIME_DIR`` (per user,
    emptied at logout), else in the temp directory as a last resort.
    """
    ident = "\0".join(
        [config.module, config.token_label, *(f"{k}={v}" for k, v in sorted(config.env.items()))]
    )
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return os.path.join(_lock_dir(config), f"xksproxy-hsm-start-{digest}.lock")


def _lock_dir(config: HsmConfig) -> str:
    softhsm_conf = config.env.get("SOFTHSM2_CONF") or os.environ.get("SOFTHSM2_CONF")
    candidates = [
        os.path.dirname(os.path.abspath(softhsm_conf)) if softhsm_conf else "",
        # systemd gives one path per RuntimeDirectory= entry, separated by colons
        os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0],
        os.environ.get("XDG_RUNTIME_DIR", ""),
    ]
    for directory in candidates:
        if directory and os.path.isdir(directory) and os.access(directory, os.W_OK):
            return directory
    return tempfile.gettempdir()


@contextlib.contextmanager
def startup_lock(config: HsmConfig) -> Iterator[None]:
    """Hold an exclusive lock shared by every process starting a pool on the same token.

    If the file cannot be opened (e.g. another user's file), starting proceeds unlocked and relies
    on the retry alone.
    """
    try:
        fd = os.open(lock_path(config), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def start_serialised(config: HsmConfig, attempt: Callable[[], None]) -> None:
    """Run ``attempt`` under :func:`startup_lock`, retrying transient failures for a while.

    A failed start (``HsmUnavailable`` / ``HsmFailure``) is retried with exponential back-off for
    up to ``START_RETRY_S``. A rejected PIN is never retried: repeating it could lock the PIN;
    nor is a token without AES-GCM (``_ck.START_FATAL_RVS``): waiting cannot add a mechanism.
    """
    delay = _FIRST_DELAY_S
    give_up = time.monotonic() + START_RETRY_S
    while True:
        try:
            with startup_lock(config):
                attempt()
            return
        except (HsmUnavailable, HsmFailure) as exc:
            fatal = isinstance(exc, HsmFailure) and exc.rv in _ck.START_FATAL_RVS
            if fatal or time.monotonic() + delay > give_up:
                raise
            log.warning("hsm %s: start failed (%s); retrying in %.2f s", config.name, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY_S)


__all__ = ["START_RETRY_S", "forks_seen", "lock_path", "start_serialised", "startup_lock"]
