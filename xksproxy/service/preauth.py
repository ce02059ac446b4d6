"""The budget for unauthenticated work: reading a body and checking its SigV4 signature.

Why a budget of its own: until SigV4 succeeds the proxy does not know who is calling, so nothing
such a caller does may be charged to what KMS needs — a key store's quota and the in-flight slots
(:mod:`xksproxy.service.admission`) are charged only after authentication. Reading and verifying
still cost a task, a buffer and CPU, so they are bounded here, per worker process and per client
address, with the short body time bound of :class:`~xksproxy.service.httpio.BodyLimit`: a client
trickling bodies over many connections (slowloris) or flooding unsigned POSTs holds at most
``[server] max_unauthenticated_per_client`` of them at once, and all clients together at most
``[server] max_unauthenticated``; the rest are answered 429 at once. A request leaves this
budget as soon as its signature is checked (either way).

The client address is the peer of the TCP connection (ASGI ``scope["client"]``, RSGI
``scope.client``). Behind a load balancer that does not preserve it, every request shares the
balancer's address: the per-client cap is then the per-worker cap, and should be raised.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xksproxy.observe import metrics
from xksproxy.observe.requestlog import RequestContext
from xksproxy.xks.errors import ThrottlingException

if TYPE_CHECKING:
    from collections.abc import Callable

    from xksproxy.service.app import XksApp

#: metrics ``reason`` labels of ``xksproxy_throttled_total`` for this budget
WORKER_REASON = "unauthenticated"
CLIENT_REASON = "unauthenticated_client"


class UnauthenticatedBudget:
    """Counts requests between arrival and the end of their signature check, per worker and per
    client address. Not thread-safe by design: it lives on one event loop."""

    def __init__(self, per_worker: int, per_client: int) -> None:
        self.per_worker = max(1, per_worker)
        self.per_client = max(1, min(per_client, self.per_worker))
        self.in_progress = 0
        self._by_client: dict[str, int] = {}

    def enter(self, client: str) -> str | None:
        """Count one request in; return the refusal reason instead (then do not :meth:`leave`)."""
        if self.in_progress >= self.per_worker:
            return WORKER_REASON
        held = self._by_client.get(client, 0)
        if held >= self.per_client:
            return CLIENT_REASON
        self._by_client[client] = held + 1
        self.in_progress += 1
        return None

    def leave(self, client: str) -> None:
        held = self._by_client.get(client, 0) - 1
        if held > 0:
            self._by_client[client] = held
        else:
            self._by_client.pop(client, None)
        self.in_progress = max(0, self.in_progress - 1)

    def held_by(self, client: str) -> int:
        return self._by_client.get(client, 0)


def install(app: XksApp) -> UnauthenticatedBudget:
    """Add the budget as the app's pre-authentication hook (``app.pre_auth``)."""
    cfg = app.config.server
    budget = UnauthenticatedBudget(cfg.max_unauthenticated, cfg.max_unauthenticated_per_client)

    def hook(ctx: RequestContext) -> Callable[[], None]:
        client = ctx.client or ""
        reason = budget.enter(client)
        if reason is not None:
            metrics.observe_throttled(ctx, reason)
            who = "this client address" if reason == CLIENT_REASON else "all clients"
            raise ThrottlingException(
                f"too many requests from {who} are still being read or authenticated; retry shortly"
            )
        return lambda: budget.leave(client)

    app.pre_auth.append(hook)
    return budget
