"""Every place xksproxy reaches into granian's or hypercorn's internals, in one module.

Why one module: each of these depends on a private detail of a third-party server that a minor
release may change without notice. Kept together, with the reason and the version each was
checked against (:data:`CHECKED`), they are reviewed in one place when a pin moves, and
``tests/transport/test_patches.py`` fails as soon as an installed version leaves the checked
range or a patched attribute or signature is no longer what we rely on.

The patches:

1. **granian's stop (SIGINT/SIGTERM)** — :func:`install_granian_stop`. granian's own handler sets
   ``main_loop_interrupt`` (a ``threading.Event``) from the signal handler, which can deadlock on
   the Event's lock during a burst of signals (see :mod:`xksproxy.runtime.stoplatch`), and its
   main loop clears that Event in some branches after it looked at the stop flag. We replace
   ``signal_handler_interrupt`` on the server object and relay the stop from a thread.
   Relies on: ``AbstractServer.signal_handler_interrupt`` (a method looked up at signal time),
   the instance attributes ``main_loop_interrupt``, ``interrupt_signal``, ``interrupt_children``.
2. **granian's SIGHUP** — :func:`route_granian_sighup`. granian's parent answers SIGHUP by
   respawning every worker (closing their connections); we make it ask the workers to reload
   their configuration instead. Relies on: ``AbstractServer.signal_handler_reload``.
3. **granian's exit status** — :func:`granian_worker_died`. ``serve()`` returns normally after a
   worker died without respawn; only its internal flags tell that from a requested stop.
4. **hypercorn's worker loop** — :func:`hypercorn_serve`. hypercorn's public ``serve()`` cannot
   take listening sockets created by our supervisor, so workers run its private
   ``hypercorn.asyncio.run._run`` with ``worker_serve`` (both keyword signatures checked).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from functools import partial
from importlib.metadata import version
from typing import TYPE_CHECKING, Protocol

from xksproxy.runtime.stoplatch import StopLatch

if TYPE_CHECKING:
    import asyncio

    from hypercorn.config import Config as HypercornBaseConfig
    from hypercorn.config import Sockets
    from hypercorn.typing import AppWrapper

#: Distribution -> (lowest checked version, first version not checked). Versions are compared
#: as integer tuples; constraints.txt pins a version inside each range.
CHECKED: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "granian": ((2, 8, 0), (2, 9, 0)),  # checked against 2.8.7
    "hypercorn": ((0, 18, 0), (0, 19, 0)),  # checked against 0.18.0
}


def version_tuple(text: str) -> tuple[int, ...]:
    """``"2.8.7"`` -> ``(2, 8, 7)`` (a pre-release suffix ends the number: ``"0.18.0rc1"``)."""
    parts: list[int] = []
    for piece in text.split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break
    return tuple(parts)


def unchecked_versions() -> list[str]:
    """The patched libraries whose installed version is outside :data:`CHECKED` (empty = fine)."""
    out = []
    for dist, (low, high) in CHECKED.items():
        installed = version(dist)
        if not low <= version_tuple(installed) < high:
            out.append(f"{dist} {installed} (patches checked for >= {low}, < {high})")
    return out


# -- 1. granian's stop --
class GranianStopState(Protocol):
    """The part of a granian server object the stop relay touches."""

    main_loop_interrupt: threading.Event
    interrupt_signal: bool


def lock_free_interrupt(
    server: GranianStopState, before_stop: Callable[[StopLatch], None] | None = None
) -> tuple[Callable[..., None], StopLatch]:
    """granian's interrupt handler, through a :class:`StopLatch`, and that latch (close it when
    ``serve()`` returns).

    A relay thread sets granian's ``main_loop_interrupt`` Event once a stop is requested (and
    simply waits if the main thread holds its lock), then keeps setting it every 0.2 s until
    serving ends: granian clears that Event in some branches of its loop (e.g. after replacing a
    crashed worker) after it has looked at the stop flag, which would otherwise swallow the stop.
    ``before_stop(latch)`` runs in the relay thread first (the drain: workers keep serving).
    """
    latch = StopLatch()

    def relay() -> None:
        latch.wait()
        if before_stop is not None and not latch.closed.is_set():
            before_stop(latch)
        # Only now: granian's loop stops at its next wake-up once this is set (a worker that
        # dies during the drain wakes it too, and must be replaced, not end the drain).
        server.interrupt_signal = True
        while not latch.closed.is_set():
            server.main_loop_interrupt.set()
            latch.closed.wait(0.2)
        latch.release()

    threading.Thread(target=relay, name="xksproxy-stop", daemon=True).start()

    return latch.handler, latch


def install_granian_stop(
    server: object, before_stop: Callable[[StopLatch], None] | None = None
) -> StopLatch:
    """Replace ``server``'s SIGINT/SIGTERM handler by :func:`lock_free_interrupt`'s; returns the
    latch to close once ``serve()`` returned."""
    from granian.server.common import AbstractServer

    assert isinstance(server, AbstractServer)
    handler, latch = lock_free_interrupt(server, before_stop)
    # granian looks the handler up on the instance at signal time, so an instance attribute wins.
    server.signal_handler_interrupt = handler  # type: ignore[method-assign]  # patch 1 (above)
    return latch


# -- 2. granian's SIGHUP --
def route_granian_sighup(on_sighup: Callable[[], None]) -> bool:
    """Make granian's parent call ``on_sighup`` on SIGHUP instead of respawning its workers.

    granian installs its own SIGHUP handler inside ``serve()`` ("gracefully respawning workers",
    which closes their connections); its handler is a method looked up at signal time, so we
    replace that method on the class. Returns False when granian is not importable. (hypercorn
    installs a closure we cannot reach: under hypercorn, reload by editing the file, or SIGHUP
    the workers.)
    """
    try:
        from granian.server.common import AbstractServer
    except ImportError:
        return False

    def signal_handler_reload(self: object, *_args: object, **_kwargs: object) -> None:
        on_sighup()

    AbstractServer.signal_handler_reload = signal_handler_reload  # type: ignore[method-assign]  # patch 2
    return True


# -- 3. granian's exit status --
def granian_worker_died(server: object) -> bool:
    """After ``serve()`` returned: True when it ended because a worker died, not on a stop."""
    return bool(getattr(server, "interrupt_children", None)) and not getattr(
        server, "interrupt_signal", False
    )


# -- 4. hypercorn's worker loop --
def hypercorn_serve(
    app: AppWrapper,
    config: HypercornBaseConfig,
    sockets: Sockets,
    shutdown_trigger: Callable[[], Awaitable[None]],
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """Serve ``app`` on the supervisor's ``sockets`` until ``shutdown_trigger`` returns."""
    from hypercorn.asyncio.run import _run, worker_serve

    _run(
        partial(worker_serve, app, config, sockets=sockets),
        debug=config.debug,
        shutdown_trigger=shutdown_trigger,
        loop_factory=loop_factory,
    )
