"""Per-member HSM metrics (``xksproxy_hsm_member_*``): state, calls, errors, latency, failovers.

Why a module of its own: members live below the ``CryptoPool`` seam (``hsm.backend.MemberSet``,
which imports nothing of ours), so the member set reports through an observer this module
supplies, and the state gauges are read from the member set at snapshot time.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

from xksproxy.observe.metrics.registry import REGISTRY, Sample, SeriesKey, labels

#: Values of the ``state`` label of ``xksproxy_hsm_member_state`` (hsm.backend.STATES).
MEMBER_STATES = ("active", "failed", "drained")


class MemberMetrics:
    """The observer one backend's member set calls (``MemberSet.set_member_observer``)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def call(self, member: str, operation: str, seconds: float, ok: bool) -> None:
        calls, duration, errors = _keys(self.backend, member, operation)
        REGISTRY.inc_key(calls)
        REGISTRY.observe_key(duration, seconds)
        if not ok:
            REGISTRY.inc_key(errors)

    def failover(self, member: str) -> None:
        REGISTRY.inc(
            "xksproxy_hsm_member_failovers_total", {"backend": self.backend, "member": member}
        )


@functools.lru_cache(maxsize=512)
def _keys(backend: str, member: str, operation: str) -> tuple[SeriesKey, SeriesKey, SeriesKey]:
    who = {"backend": backend, "member": member}
    return (
        ("xksproxy_hsm_member_calls_total", labels({**who, "operation": operation})),
        ("xksproxy_hsm_member_call_duration_seconds", labels(who)),
        ("xksproxy_hsm_member_errors_total", labels(who)),
    )


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
