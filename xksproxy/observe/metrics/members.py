"""Per-member HSM metrics (``xksproxy_hsm_member_*``): state, calls, errors, latency, failovers.

Why a module of its own: members live below the ``CryptoPool`` seam (``hsm.backend.MemberSet``,
which imports nothing of ours), so the member set reports through an observer this module
supplies, and the state gauges are read from the member set at snapshot time.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from threading import get_ident
from typing import Any

from xksproxy.observe.metrics.children import CounterChild
from xksproxy.observe.metrics.registry import REGISTRY, Sample, labels

#: Values of the ``state`` label of ``xksproxy_hsm_member_state`` (hsm.backend.STATES).
MEMBER_STATES = ("active", "failed", "drained")


class MemberMetrics:
    """The observer one backend's member set calls (``MemberSet.set_member_observer``)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def call(self, member: str, operation: str, seconds: float, ok: bool) -> None:
        c = _children(get_ident(), self.backend, member, operation)
        c.calls.inc()
        c.duration.observe(seconds)
        if not ok:
            (c.errors or c.bind_errors()).inc()

    def failover(self, member: str) -> None:
        REGISTRY.inc(
            "xksproxy_hsm_member_failovers_total", {"backend": self.backend, "member": member}
        )


class MemberChildren:
    """The calling thread's children for one (backend, member, operation); the errors child is
    bound on the first error, so a member that never failed shows no errors series."""

    __slots__ = ("_who", "calls", "duration", "errors")

    def __init__(self, backend: str, member: str, operation: str) -> None:
        who = {"backend": backend, "member": member}
        self._who = labels(who)
        self.calls = REGISTRY.counter(
            ("xksproxy_hsm_member_calls_total", labels({**who, "operation": operation}))
        )
        self.duration = REGISTRY.histogram(("xksproxy_hsm_member_call_duration_seconds", self._who))
        self.errors: CounterChild | None = None

    def bind_errors(self) -> CounterChild:
        self.errors = REGISTRY.counter(("xksproxy_hsm_member_errors_total", self._who))
        return self.errors


@functools.lru_cache(maxsize=1024)
def _children(ident: int, backend: str, member: str, operation: str) -> MemberChildren:
    """Keyed by the thread's ident: each child has one writer (see :mod:`.children`)."""
    return MemberChildren(backend, member, operation)


REGISTRY.on_reset(_children.cache_clear)


def install(backends: Mapping[str, Any]) -> None:
    """Observe every member set in ``backends`` (name -> MemberSet) and expose their states."""
    for name, member_set in backends.items():
        member_set.set_member_observer(MemberMetrics(name))

    def collect() -> Iterable[Sample]:
        for name, member_set in backends.items():
            for view in member_set.views():
                who = {"backend": name, "member": view.name}
                for state in MEMBER_STATES:
                    yield (
                        "xksproxy_hsm_member_state",
                        {**who, "state": state},
                        float(view.state == state),
                    )
                yield "xksproxy_hsm_member_outstanding", who, float(view.outstanding)

    REGISTRY.add_collector(collect)
