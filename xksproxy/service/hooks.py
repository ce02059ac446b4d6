"""The app's seams, written down as types: what operations code hooks in, what servers call.

Why here: the service owns these contracts; runtime/ (the two server interfaces, the factory,
the operations wiring) and observe/ type against them instead of against ``Any``, so mypy
proves that a hook or a server interface offers what the app calls and vice versa.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from xksproxy.observe.requestlog import RequestContext, RequestObserver
from xksproxy.service.httpio import BodyLimit, Respond

if TYPE_CHECKING:
    from hsm.interface import CryptoPool
    from hsm.types import HsmConfig

Release = Callable[[], None]
"""Called once when the response to an admitted request has been sent."""

AdmissionHook = Callable[[RequestContext], "Release | None"]
"""As ``app.pre_auth``: runs before the body is read (ctx has the store, operation, key id and
client address), its release runs once the signature is checked. As ``app.admission``: runs
after authentication, its release once the response is sent. Raises an ``XksError`` to refuse
(e.g. 429); may return a :data:`Release`."""

BeforeDispatchHook = Callable[[RequestContext], None]
"""Runs after authentication, validation and policy, just before the HSM work (ctx then has the
access key id and the metadata); raises an ``XksError`` to refuse (e.g. a per-store quota)."""

BeforeAnswerHook = Callable[[RequestContext], None]
"""Runs once a request has succeeded (ctx finished with 200), before the answer is sent; raises
an ``XksError`` to answer that error instead (the audit: a record that cannot be queued)."""

Observer = RequestObserver
"""Runs after every API response with the finished context; cheap, must not raise, and must not
change the context: the request log and the audit queue it as it is, and their writer threads
read it later."""

LifecycleHook = Callable[[], Awaitable[None]]
"""Runs in the lifespan: after the HSM pools and the health task start, before they stop."""

PoolFactory = Callable[["HsmConfig"], "CryptoPool"]
"""Builds the (not yet started) pool for one ``[[hsm]]``; the app starts and closes it."""

RequestHeaders = Sequence[tuple[str | bytes, str | bytes]]
"""(name, value) pairs as received, lower-case names, str or bytes (what ``sigv4.verify`` takes)."""

ReadBody = Callable[[], Awaitable[bytes]]
"""Returns the whole body within ``body_limit``; raises ``ValidationException`` or
``httpio.Disconnected``."""


class ServedApp(Protocol):
    """What a server interface (ASGI under hypercorn, RSGI under granian) calls on the app."""

    @property
    def body_limit(self) -> BodyLimit:
        """Size cap and time bound the interface applies while reading a body."""
        ...

    async def handle(
        self,
        method: str,
        path: str,
        query: str,
        headers: RequestHeaders,
        read_body: ReadBody,
        respond: Respond,
        *,
        client: str | None = None,
    ) -> None:
        """Serve one request; ``path`` and ``query`` as on the wire (percent-encoded);
        ``client`` the peer's host (the key of the per-client unauthenticated budget)."""
        ...

    async def startup(self) -> None:
        """Open the HSM pools and start health (before the first connection is accepted)."""
        ...

    async def shutdown(self) -> None:
        """Run shutdown hooks, flush logs, close the pools (after the last request)."""
        ...

    def report_startup_failure(self, exc: Exception) -> str:
        """Log why :meth:`startup` failed; return the one-line reason for the server."""
        ...
