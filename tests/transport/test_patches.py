"""The third-party internals :mod:`xksproxy.runtime.patches` relies on are still there.

Each test names the patch it guards. When one fails after a granian or hypercorn upgrade, read
the new version's code for that detail, adapt the patch, and move :data:`patches.CHECKED`.
"""

from __future__ import annotations

import inspect
import threading

import pytest

from xksproxy.runtime import patches


def test_installed_versions_are_the_checked_ones() -> None:
    assert patches.unchecked_versions() == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2.8.7", (2, 8, 7)), ("0.18.0", (0, 18, 0)), ("0.19.0rc1", (0, 19, 0)), ("3", (3,))],
)
def test_version_tuple(text: str, expected: tuple[int, ...]) -> None:
    assert patches.version_tuple(text) == expected


def test_granian_stop_handler_and_flags() -> None:
    """Patches 1 and 3: the handler is a method looked up at signal time (so an instance
    attribute replaces it), and the server object carries the Event and flags we set and read."""
    from granian import Granian
    from granian.server.common import AbstractServer

    assert inspect.isfunction(AbstractServer.signal_handler_interrupt)
    init = inspect.getsource(AbstractServer.__init__)
    for line in (
        "self.main_loop_interrupt = threading.Event()",
        "self.interrupt_signal = False",
        "self.interrupt_children = []",
    ):
        assert line in init, line
    # A server object in the state __init__ leaves (the real __init__ configures logging for the
    # whole process, which other tests must not inherit).
    server = Granian.__new__(Granian)
    server.main_loop_interrupt = threading.Event()
    server.interrupt_signal = False
    server.interrupt_children = []
    latch = patches.install_granian_stop(server)
    try:
        assert server.signal_handler_interrupt is not AbstractServer.signal_handler_interrupt
        assert not patches.granian_worker_died(server)
        server.interrupt_children.append(0)
        assert patches.granian_worker_died(server)
        server.signal_handler_interrupt()
        assert server.main_loop_interrupt.wait(5.0)
        # Set by the relay just before it wakes granian (after any drain), not by the handler.
        assert server.interrupt_signal is True
        assert not patches.granian_worker_died(server)
    finally:
        latch.close()


def test_granian_sighup_handler_is_a_method_we_can_replace(monkeypatch) -> None:
    """Patch 2: granian's parent calls ``self.signal_handler_reload`` on SIGHUP."""
    from granian.server.common import AbstractServer

    assert inspect.isfunction(AbstractServer.signal_handler_reload)
    assert "signal_handler_reload" in inspect.getsource(AbstractServer)
    monkeypatch.setattr(
        AbstractServer, "signal_handler_reload", AbstractServer.signal_handler_reload
    )
    calls: list[int] = []
    assert patches.route_granian_sighup(lambda: calls.append(1)) is True
    AbstractServer.signal_handler_reload(object())
    assert calls == [1]


def test_hypercorn_private_worker_entry_points() -> None:
    """Patch 4: ``_run(main, *, debug, shutdown_trigger, loop_factory)`` and
    ``worker_serve(app, config, *, sockets, shutdown_trigger)``."""
    from hypercorn.asyncio import run

    run_params = inspect.signature(run._run).parameters
    assert list(run_params) == ["main", "debug", "shutdown_trigger", "loop_factory"]
    assert all(run_params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in list(run_params)[1:])
    serve_params = inspect.signature(run.worker_serve).parameters
    assert list(serve_params)[:2] == ["app", "config"]
    assert serve_params["sockets"].kind is inspect.Parameter.KEYWORD_ONLY
