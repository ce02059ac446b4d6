"""IVs for one session, drawn from the HSM's RNG in batches and handed out exactly once.

Why: with ``iv_source = "rng"`` every Encrypt used to spend one ``C_GenerateRandom`` round trip on
12 bytes. One call for :data:`IV_BATCH` IVs costs about the same as one for a single IV (see
``loadtest/bench_hsm.py --calls`` and hsm/README.md, "IV buffer"), so a session draws a batch and
slices it. The bytes are the same HSM RNG output the unbatched path used; what must hold is that
no slice is ever handed out twice, so:

* a position only moves forward, and the buffer refills only once every slice has been taken;
* :meth:`IvBuffer.wipe` zeroes and empties it; the pool calls it whenever a handle is opened
  for the session (first open, replacement after a fault, reopening after recovery) or the
  session is closed, and a forgotten handle is always reopened before it is used again (IVs
  never outlive or cross a session);
* a child process after ``fork()`` holds a copy of its parent's memory, so :meth:`IvBuffer.take`
  compares :func:`hsm.startup.forks_seen` with the value at the last refill and wipes the copy
  instead of handing the parent's IVs out a second time.

A buffer belongs to one session and is used by one thread at a time, like :class:`hsm.gcm.Gcm`:
whoever holds the session holds its buffer (inline mode: the pool's free list hands a session to
one operation at a time; threaded mode: each session has its own worker thread). There is no
lock here, and none is needed: the module's call lock is a no-op for modules that are not
serialised.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Final

from . import startup
from .limits import IV_BYTES

#: IVs per ``C_GenerateRandom`` call (64 x 12 = 768 bytes).
IV_BATCH: Final = 64

#: ``draw(address, n)`` fills ``n`` bytes at ``address`` from the HSM's RNG or raises.
Draw = Callable[[int, int], None]


class IvBuffer:
    """A batch of RNG output, sliced into IVs of :data:`~hsm.limits.IV_BYTES` bytes."""

    __slots__ = ("_addr", "_buf", "_end", "_forks", "_pos", "_size", "_view")

    def __init__(self, batch: int = IV_BATCH) -> None:
        if batch < 1:
            raise ValueError("an IV batch holds at least one IV")
        self._size = batch * IV_BYTES
        self._buf = bytearray(self._size)
        # The ctypes view pins the bytearray (no resize while exported), so the address the
        # HSM writes to stays the one we slice from.
        self._view = (ctypes.c_char * self._size).from_buffer(self._buf)
        self._addr = ctypes.addressof(self._view)
        self._pos = 0
        self._end = 0  # bytes [_pos, _end) are drawn and not yet handed out
        self._forks = startup.forks_seen()

    @property
    def remaining(self) -> int:
        """IVs left before the next draw (0 right after :meth:`wipe`)."""
        if self._forks != startup.forks_seen():
            return 0
        return (self._end - self._pos) // IV_BYTES

    def take(self, draw: Draw) -> bytes:
        """The next unused IV; draws a new batch with ``draw`` when none is left.

        If ``draw`` raises, the buffer stays empty (nothing half-filled is ever handed out) and
        the exception propagates.
        """
        if self._forks != startup.forks_seen():
            self.wipe()  # this is a forked child: the parent may hand out the same bytes
        pos = self._pos
        if pos >= self._end:
            # Every IV of the old batch is handed out (public in its answer): nothing to zero.
            # Empty first, so a draw that raises leaves nothing to hand out.
            self._pos = self._end = 0
            draw(self._addr, self._size)
            self._forks = startup.forks_seen()
            self._end = self._size
            pos = 0
        self._pos = pos + IV_BYTES
        return bytes(self._buf[pos : pos + IV_BYTES])

    def wipe(self) -> None:
        """Zero and discard every IV not yet handed out; the next :meth:`take` draws afresh."""
        ctypes.memset(self._addr, 0, self._size)
        self._pos = self._end = 0


__all__ = ["IV_BATCH", "Draw", "IvBuffer"]
