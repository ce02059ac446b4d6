"""Wire the metrics into one worker's app: an observer per finished request, health gauges."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from xksproxy.observe import requestlog
from xksproxy.observe.metrics import kms_signals, members
from xksproxy.observe.metrics.record import (
    THROTTLED,
    configure,
    observe_request,
    request_log_dropped,
)
from xksproxy.observe.metrics.registry import REGISTRY, Sample
from xksproxy.observe.metrics.series import HEALTH_STATES
from xksproxy.observe.metrics.snapshots import start_worker


def install(app: Any) -> None:
    """Record every finished request (app observer) and expose live pool/health gauges.

    ``app`` is the service's app (``xksproxy.service.app.XksApp``); typed loosely because
    observe/ sits below service/ in the layers and must not import it.
    """
    configure(deadline_s=app.config.server.request_deadline_ms / 1000.0)

    def observer(ctx: requestlog.RequestContext) -> None:
        throttled = ctx.extra.get(THROTTLED)
        observe_request(
            operation=ctx.operation or "unknown",
            keystore=ctx.store or "",
            status=ctx.status,
            error_name=ctx.error_name,
            seconds=ctx.latency_ms / 1000.0,
            shed=throttled is not None and throttled != "quota",
            # only authenticated requests are KMS's: an anonymous 401 or a slow-body 400 must
            # neither count as good nor burn the error budget
            slo=ctx.access_key_id is not None,
        )

    def health_gauges() -> Iterable[Sample]:
        monitor = getattr(app, "health", None)
        if monitor is None:
            return
        for name in list(getattr(app, "pools", {}) or {}):
            status = monitor.status(name)
            for s in HEALTH_STATES:
                yield "xksproxy_token_health", {"token": name, "status": s}, float(s == status)

    async def start() -> None:
        start_worker()
        members.install(getattr(app, "backends", {}) or {})

    requestlog.STDOUT.on_drop = request_log_dropped
    app.observers.append(observer)
    REGISTRY.add_collector(health_gauges)
    # Certificate expiry, credential age, readiness and draining (KMS's CloudWatch signals).
    REGISTRY.add_collector(lambda: kms_signals.collector(app))
    app.on_startup.append(start)
