"""granian's parent must stop on SIGINT/SIGTERM even when signals arrive in a burst."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from xksproxy.runtime.patches import lock_free_interrupt


def _granian_like() -> SimpleNamespace:
    return SimpleNamespace(main_loop_interrupt=threading.Event(), interrupt_signal=False)


def test_interrupt_handler_returns_while_the_main_thread_holds_the_event_lock() -> None:
    """A signal handler runs in the main thread, possibly while that thread (an interrupted
    earlier handler, or Event.wait re-acquiring) holds the Event's lock: the handler must not
    wait for that lock, and the Event must still be set once the lock is released."""
    server = _granian_like()
    handler, latch = lock_free_interrupt(server)
    done = threading.Event()
    try:
        with server.main_loop_interrupt._cond:  # held by "the interrupted main thread"
            caller = threading.Thread(target=lambda: (handler(), handler(), done.set()))
            caller.start()
            assert done.wait(5.0), "the handler blocked on the Event lock"
            assert not server.main_loop_interrupt.is_set()
        assert server.main_loop_interrupt.wait(5.0)
        assert server.interrupt_signal is True
    finally:
        latch.close()


def test_a_stop_survives_granian_clearing_its_event() -> None:
    """granian clears ``main_loop_interrupt`` in some branches (e.g. after replacing a crashed
    worker) after looking at the stop flag: the stop must be re-signalled, not lost."""
    server = _granian_like()
    handler, latch = lock_free_interrupt(server)
    try:
        handler()
        assert server.main_loop_interrupt.wait(5.0)
        server.main_loop_interrupt.clear()  # granian's respawn branch
        assert server.main_loop_interrupt.wait(5.0), "the stop was swallowed"
    finally:
        latch.close()


def test_signals_after_the_latch_is_closed_are_ignored() -> None:
    server = _granian_like()
    handler, latch = lock_free_interrupt(server)
    latch.close()
    handler()  # must not raise or write to a reused descriptor
    assert latch.closed.is_set()


def test_before_stop_runs_first_and_the_stop_follows() -> None:
    """The drain hook (runtime/drain.py) runs in the relay thread before granian is woken; a
    worker death waking granian meanwhile must not read as a stop (interrupt_signal still False)."""
    server = _granian_like()
    entered, release = threading.Event(), threading.Event()

    def before_stop(latch: object) -> None:
        entered.set()
        release.wait(5.0)

    handler, latch = lock_free_interrupt(server, before_stop)
    try:
        handler(15)
        assert entered.wait(5.0)
        assert latch.signum == 15 and latch.count == 1
        assert not server.main_loop_interrupt.is_set() and server.interrupt_signal is False
        release.set()
        assert server.main_loop_interrupt.wait(5.0)
        assert server.interrupt_signal is True
    finally:
        latch.close()
