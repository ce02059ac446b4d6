"""granian's parent must stop on SIGINT/SIGTERM even when signals arrive in a burst."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from xksproxy.server import _lock_free_interrupt


def test_interrupt_handler_returns_while_the_main_thread_holds_the_event_lock() -> None:
    """A signal handler runs in the main thread, possibly while that thread (an interrupted
    earlier handler, or Event.wait re-acquiring) holds the Event's lock: the handler must not
    wait for that lock, and the Event must still be set once the lock is released."""
    server = SimpleNamespace(main_loop_interrupt=threading.Event(), interrupt_signal=False)
    handler = _lock_free_interrupt(server)
    done = threading.Event()
    with server.main_loop_interrupt._cond:  # held by "the interrupted main thread"
        caller = threading.Thread(target=lambda: (handler(), handler(), done.set()))
        caller.start()
        assert done.wait(5.0), "the handler blocked on the Event lock"
        assert server.interrupt_signal is True
        assert not server.main_loop_interrupt.is_set()
    assert server.main_loop_interrupt.wait(5.0)
