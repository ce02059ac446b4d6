"""Readiness (``GET /ready``): may a load balancer send this instance KMS traffic right now?

Why separate from ``/ping`` (liveness): a proxy whose process answers but whose HSM is not usable,
or which is draining before it exits, must leave the load balancer's rotation without being
restarted. ``/ping`` says "the process is alive"; ``/ready`` says "send me KMS requests".

Ready means all of:

- the app has started (its HSM pools are open: ``XksApp.startup`` ran);
- every enabled key store's backend is serving per the health monitor's *cached* deep probe
  (:func:`backend_serving`; ``/ready`` never calls the HSM itself);
- the instance is not draining (:class:`Drain`: the launcher got SIGTERM).

:func:`backend_serving` is the one place that turns the health monitor's per-backend answer into
"can serve"; HSM members (several HSMs behind one backend) extend it there. DEGRADED counts as
serving on purpose: it means "answers, but slowly or recovering". Taking every DEGRADED instance
out of rotation would turn a slow shared HSM into a fleet-wide outage.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from xksproxy.keys.health import ACTIVE, DEGRADED, HealthMonitor
from xksproxy.keys.keystores import KeyStore

SERVING_STATES = frozenset({ACTIVE, DEGRADED})

READY_BODY = b'{"ready":true}'


def backend_serving(health: HealthMonitor, backend: str) -> bool:
    """True when some member of ``backend`` can serve KMS requests, by its own cached probe.

    A backend of several HSM members (issue 13) serves while one member does: the member set
    routes around the others.
    """
    return any(
        health.member_status(backend, member) in SERVING_STATES
        for member in health.members(backend)
    )


class Drain:
    """Whether this worker is draining; set once, never cleared (a drained worker exits).

    ``flag_file`` (``$XKSPROXY_DRAIN_FILE``, made by the launcher on SIGTERM) is looked at by
    :meth:`check`: ``/ready`` calls it on every check, so the answer turns 503 as soon as the file
    exists, and a poller (:mod:`xksproxy.runtime.drain`) calls it a few times a second so that
    responses start carrying ``Connection: close`` at once too.
    """

    def __init__(self, flag_file: str | None = None) -> None:
        self.flag_file = flag_file or None
        self.draining = False
        # What the server interfaces read per response: close HTTP/1.1 connections after the
        # answer so clients reconnect (through the load balancer, to a ready instance).
        self.close_connections = False

    def begin(self) -> None:
        self.draining = True
        self.close_connections = True

    def check(self) -> bool:
        """True when draining (seeing the flag file for the first time starts the drain)."""
        if not self.draining and self.flag_file is not None and os.path.exists(self.flag_file):
            self.begin()
        return self.draining


def not_ready_reason(
    *, started: bool, drain: Drain, stores: Iterable[KeyStore], health: HealthMonitor
) -> str | None:
    """None when ready, else a short reason (names of stores and backends only, never secrets)."""
    if drain.check():
        return "draining: the proxy is shutting down"
    if not started:
        return "starting: HSM pools not open yet"
    down = sorted(
        {
            f"key store {store.name}: HSM {store.resolver.backend} is {health.status(b)}"
            for store in stores
            if store.config.enabled and not backend_serving(health, b := store.resolver.backend)
        }
    )
    if down:
        return "; ".join(down[:3])[:300]
    return None
