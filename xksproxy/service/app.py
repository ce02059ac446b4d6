"""The XKS ASGI application: routing, body cap, SigV4, validation, dispatch, policy, errors.

Why a bare ASGI callable rather than Starlette's router and middleware: KMS needs *every* answer
(unknown path, wrong method, oversized body, crash) to be the XKS JSON error shape, and the hot
path has to do thousands of requests per second on two cores.  Routing is two dict lookups on
pre-built base paths; there is no per-request middleware stack, no Request object and no HTML
error page anywhere.
:meth:`XksApp.handle` serves a request whatever the server interface: ``__call__`` is the ASGI
entry (hypercorn), :mod:`xksproxy.runtime.rsgi` the RSGI one (granian).

One request, in order (each step's failure is one XKS error, see ``xksproxy.xks.errors``):

1. ``GET|HEAD /ping`` -> 200 ``{"status":"ok"}``, unauthenticated, no HSM call (liveness).
   ``GET|HEAD /ready`` -> 200 ``{"ready":true}`` or 503 ``{"ready":false,"reason":"..."}``,
   unauthenticated, from cached state only (readiness for load balancers,
   :mod:`xksproxy.service.readiness`). While draining, HTTP/1.1 answers carry
   ``Connection: close`` (``app.drain.close_connections``) so clients reconnect elsewhere.
2. Route ``<prefix>/kms/xks/v1/health`` or ``.../keys/<id>/{metadata,encrypt,decrypt}``; anything
   else, or a URI path over 256 characters -> 404 InvalidUriPathException.
3. Non-POST on an API path -> 405 (``Allow: POST``), JSON body.
4. Pre-authentication hooks (``XksApp.pre_auth``: the unauthenticated budget per worker and
   per client address, :mod:`xksproxy.service.preauth`) may refuse (429) before the body is read;
   what they hold is released as soon as the signature has been checked.
5. Body read with a hard cap (``server.max_body_bytes``) and a short time bound (a trickled body
   holds only an unauthenticated slot, and not for long) -> 400 ValidationException.
6. SigV4 against *this* store's credentials and regions -> 401 AuthenticationFailedException
   (the cause goes to the request log as ``authFailure``).
7. JSON decode (malformed -> 400 ValidationException), then the admission hooks
   (``XksApp.admission``: in-flight gate, the store's quota) may refuse (429): only authenticated
   requests are charged to them, so anonymous traffic cannot use up KMS's budget. Then route
   the operation through its row of the dispatch table (:mod:`xksproxy.service.dispatch`,
   operations as data in :mod:`xksproxy.xks.operations`).
   For a key operation: an invalid ``externalKeyId`` (not 1..128 of ``A-Za-z0-9._-``) -> 400
   ValidationException (an invalid input parameter; checked after authentication so an anonymous
   caller learns nothing); store disabled -> 400 InvalidStateException (not health).
8. Request validation (the operation's parser in ``xksproxy.xks.protocol``), then key
   resolution (``xksproxy.keys.resolver``: key not in the store -> 404 KeyNotFoundException,
   a key whose lifecycle state refuses the operation -> 400 InvalidStateException or
   InvalidKeyUsageException; lifecycle state and version from the HSM, cached <= 5 s).
9. The store's Cedar policy, if it has one (``xksproxy.keys.policy``; it sees the resolved
   key's state, so it runs after resolution: an unknown key is 404 and a refused key state 400
   whoever asks) -> 403 AccessDeniedException; then the before-dispatch hooks; then the handler
   on the key's backend pool under the request deadline (``server.request_deadline_ms`` from
   arrival).  Health skips 8 and 9 (never subject to policy) and answers from the cached probe
   results.

Start-up happens only in the server's lifespan (:meth:`XksApp.startup`, called by the ASGI
lifespan or RSGI's ``__rsgi_init__``), never in the middle of a request: an app that was never
started (or was shut down) answers every HSM operation as an unavailable HSM (500
InternalException, the ``HsmUnavailable`` mapping) and GetHealthStatus with every backend
UNAVAILABLE (no probe result yet).

Seams for operations code (their types are in :mod:`xksproxy.service.hooks`):
- ``app.pre_auth``: callables ``(ctx) -> release | None`` run before the body is read (ctx has
  the store, operation, key id and ``client`` address); raise an ``XksError`` to refuse; a
  returned ``release()`` is called once the signature has been checked (or the request failed).
- ``app.admission``: callables ``(ctx) -> release | None`` run after authentication; raise an
  ``XksError`` to refuse; a returned ``release()`` is called once the response is sent.
- ``app.before_dispatch``: callables ``(ctx)`` run after authentication, validation and policy,
  just before the HSM work (ctx then has the key store, key id, access key id and metadata);
  raise an ``XksError`` (e.g. 429 for a per-store quota, 503 past the deadline) to refuse.
- ``app.before_answer``: one callable ``(ctx)`` or None, run once a request has succeeded (ctx
  finished with 200), before its answer is sent; raise an ``XksError`` to send that error
  instead. The audit hands Encrypt/Decrypt records over here, so none is answered unrecorded.
  One slot, not a list: the hand-off must be the very last step before the answer (a refusal
  after it would leave the record of an answer never sent), and a slot cannot be appended to.
- ``app.observers``: callables ``(ctx)`` run after every API response with the finished
  :class:`~xksproxy.observe.requestlog.RequestContext` (outcome, errorName, latency, store, key id,
  metadata; ``ctx.extra["metadata"]`` holds the known ``requestMetadata`` string fields, each
  bounded by ``protocol.MAX_LOGGED_CHARS``).  Observers must
  be cheap and must not raise (exceptions are logged and dropped).
- ``app.on_startup`` / ``app.on_shutdown``: async callables run in the lifespan, after/before the
  HSM pools and the health task.
- ``app.pools``: ``{backend name: CryptoPool}`` once started (an ``on_startup`` hook may wrap
  them, as admission does).
- ``app.replace_keystores(config)``: swap the key store table (credentials, keys, policy) without
  touching connections or HSM pools, for reload.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING, Any

import orjson

import sigv4
from hsm.backend import MemberSet
from hsm.interface import CryptoPool
from xksproxy.config import Config
from xksproxy.keys import policy
from xksproxy.keys.health import HealthMonitor
from xksproxy.keys.keystores import KeyStore, KeyStoreTable
from xksproxy.observe import requestlog
from xksproxy.observe.requestlog import RequestContext, RequestLog
from xksproxy.service.dispatch import BINDINGS, Binding
from xksproxy.service.hooks import (
    AdmissionHook,
    BeforeAnswerHook,
    BeforeDispatchHook,
    LifecycleHook,
    Observer,
    PoolFactory,
    ReadBody,
    Release,
    RequestHeaders,
)
from xksproxy.service.httpio import (
    CLOSE,
    BodyLimit,
    Disconnected,
    Headers,
    Respond,
    body_left_unread,
    response_headers,
)
from xksproxy.service.readiness import READY_BODY, Drain, not_ready_reason
from xksproxy.xks.errors import (
    InternalException,
    InvalidUriPathException,
    MethodNotAllowed,
    to_xks_error,
)
from xksproxy.xks.operations import HEALTH
from xksproxy.xks.protocol import decode_json, logged_metadata
from xksproxy.xks.uri import MAX_URI_CHARS

if TYPE_CHECKING:
    from hsm.types import HsmConfig

log = logging.getLogger("xksproxy.app")

_HEALTH_BINDING = BINDINGS[HEALTH.name]
_KEY_BINDINGS = {name: b for name, b in BINDINGS.items() if b.spec.takes_key}
_PING_BODY = b'{"status":"ok"}'
_PROBE_PATHS = frozenset({"/ping", "/ready"})


def open_hsm_pool(config: HsmConfig) -> CryptoPool:
    """The default :data:`~xksproxy.service.hooks.PoolFactory`: a PKCS#11 ``hsm.HsmPool``."""
    from hsm.pool import HsmPool  # deferred: importing the app must not load PKCS#11

    return HsmPool(config)


def _unavailable(backend: str) -> Exception:
    """What a request for a pool that is not started meets: the HSM is unavailable."""
    from hsm.errors import HsmUnavailable

    return HsmUnavailable(f"HSM pool {backend} is not started")


class XksApp:
    """ASGI application for one worker process (build it after fork).

    ``pool_factory`` builds each ``[[hsm]]``'s pool at :meth:`startup` (default: PKCS#11
    ``hsm.HsmPool``; tests may pass ``hsm.testing.MemoryPool``).  Request logging to stdout is
    on when ``[logging] request_log`` says so.
    """

    def __init__(self, config: Config, *, pool_factory: PoolFactory = open_hsm_pool) -> None:
        self.config = config
        self.table = KeyStoreTable(config, self._read_custody)
        self.pools: dict[str, CryptoPool] = {}
        self.observers: list[Observer] = []
        self.pre_auth: list[AdmissionHook] = []
        self.admission: list[AdmissionHook] = []
        self.before_dispatch: list[BeforeDispatchHook] = []
        self.before_answer: BeforeAnswerHook | None = None
        self.on_startup: list[LifecycleHook] = []
        self.on_shutdown: list[LifecycleHook] = []
        if config.logging.request_log:
            self.observers.append(RequestLog().observe)
        self._pool_factory = pool_factory
        self._deadline_s = config.server.request_deadline_ms / 1000.0
        # A body slower than this is a misbehaving client, never KMS (see BodyLimit).
        self.body_limit = BodyLimit(config.server.max_body_bytes, max(1.0, 2 * self._deadline_s))
        self._max_plaintext = {h.name: h.max_plaintext_bytes for h in config.hsms}
        self._max_plaintext.update(
            {b: config.members(b)[0].max_plaintext_bytes for b in config.backends}
        )
        self.backends: dict[str, MemberSet] = {}
        """Backend name -> its members (the unwrapped pools; health, drain and status read them)."""
        self.health = self._unprobed_health()
        self._started = False
        self._start_lock = asyncio.Lock()
        # Draining state; the launcher's drain flag is attached by xksproxy.runtime.drain.
        self.drain = Drain()

    def _unprobed_health(self) -> HealthMonitor:
        """Health before start-up / after shutdown: no pools, no probe result -> UNAVAILABLE."""
        return HealthMonitor(self.config.health, {}, self.config.hsm_models)

    # ------------------------------------------------------------------ lifecycle

    async def startup(self) -> None:
        """Open one pool per ``[[hsm]]`` (in this process) and start the health task.

        Called by the server's lifespan only (idempotent)."""
        async with self._start_lock:
            if self._started:
                return
            pools: dict[str, CryptoPool] = {}
            backends: dict[str, MemberSet] = {}
            try:
                for backend in self._backend_names():
                    members = [
                        (h.name, self._pool_factory(h)) for h in self.config.members(backend)
                    ]
                    member_set = MemberSet(backend, members)
                    await member_set.start()
                    pools[backend] = backends[backend] = member_set
            except BaseException:
                for pool in pools.values():
                    await pool.close()
                raise
            self.pools = pools
            self.backends = backends
            self.health = HealthMonitor(self.config.health, pools, self.config.hsm_models)
            await self.health.start()
            for hook in self.on_startup:
                await hook()
            self._started = True

    async def shutdown(self) -> None:
        async with self._start_lock:
            for hook in self.on_shutdown:
                try:
                    await hook()
                except Exception:
                    log.exception("shutdown hook failed")
            await asyncio.to_thread(requestlog.STDOUT.flush, 2.0)  # queued request-log lines
            await self.health.close()
            self.health = self._unprobed_health()
            for pool in self.pools.values():
                try:
                    await pool.close()
                except Exception:
                    log.exception("closing an HSM pool failed")
            self.pools = {}
            self.backends = {}
            self._started = False

    def _backend_names(self) -> list[str]:
        """Every backend (a plain [[hsm]] is a one-member backend named after itself)."""
        return list(self.config.backends) or [h.name for h in self.config.hsms]

    def replace_keystores(self, config: Config) -> None:
        """Swap key stores (credentials, keys, policy) atomically for new requests."""
        table = KeyStoreTable(config, self._read_custody)
        unknown = {s.resolver.backend for s in table.stores} - set(self._max_plaintext)
        if unknown:
            raise ValueError(f"new [[hsm]] tables need a restart: {sorted(unknown)}")
        self.config = config
        self.table = table

    def report_startup_failure(self, exc: Exception) -> str:
        """Log why :meth:`startup` failed; return the one-line reason for the server."""
        detail = str(exc)[:300]
        log.error(
            "startup failed", extra={"fields": {"error": type(exc).__name__, "detail": detail}}
        )
        return f"{type(exc).__name__}: {detail}"

    # ------------------------------------------------------------------ what bindings use
    # (dispatch.Services: the app's side of the dispatch table)

    def max_plaintext_bytes(self, store: KeyStore) -> int:
        return self._max_plaintext[store.resolver.backend]

    def run_before_dispatch(self, ctx: RequestContext) -> None:
        for hook in self.before_dispatch:
            hook(ctx)

    def pool(self, backend: str) -> CryptoPool:
        pool = self.pools.get(backend)
        if pool is None:
            raise _unavailable(backend)
        return pool

    async def _read_custody(self, backend: str, label: str, deadline: float) -> bytes | None:
        """The resolvers' :data:`~xksproxy.keys.resolver.CustodySource`: the backend's pool."""
        return await self.pool(backend).custody(label, deadline=deadline)

    def health_answer(self, store: KeyStore) -> dict[str, Any]:
        return self.health.answer([store.resolver.backend])

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send(
                        {
                            "type": "lifespan.startup.failed",
                            "message": self.report_startup_failure(exc),
                        }
                    )
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ------------------------------------------------------------------ ASGI entry

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    def _route(self, path: str) -> tuple[KeyStore, Binding, str | None]:
        if len(path) <= MAX_URI_CHARS:
            base, _, last = path.rpartition("/")
            if last == HEALTH.name:
                store = self.table.by_base_path.get(base)
                if store is not None:
                    return store, _HEALTH_BINDING, None
            else:
                binding = _KEY_BINDINGS.get(last)
                if binding is not None:
                    base, _, key_id = base.rpartition("/")
                    base, _, keys = base.rpartition("/")
                    if keys == "keys":
                        store = self.table.by_base_path.get(base)
                        if store is not None:
                            return store, binding, key_id
        raise InvalidUriPathException("no such XKS API path on this proxy")

    async def _read_asgi_body(self, scope: dict[str, Any], receive: Any) -> bytes:
        """Read an ASGI request body under :attr:`body_limit` (size cap and time bound)."""
        limit = self.body_limit
        for name, value in scope["headers"]:
            if name == b"content-length":
                limit.check_declared(value)
                break
        chunks: list[bytes] = []
        total = 0
        try:
            async with asyncio.timeout(limit.timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise Disconnected
                    chunk = message.get("body", b"")
                    if chunk:
                        total += len(chunk)
                        if total > limit.cap:
                            raise limit.too_large()
                        chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise limit.timed_out() from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """ASGI HTTP entry: route on ``raw_path`` (as received, still percent-encoded)."""
        raw = scope.get("raw_path") or scope["path"].encode("utf-8")

        read_in_full = False

        async def read_body() -> bytes:
            nonlocal read_in_full
            body = await self._read_asgi_body(scope, receive)
            read_in_full = True
            return body

        http1 = scope.get("http_version", "1.1") != "2"

        async def respond(status: int, body: bytes, extra: Headers | None) -> None:
            # draining: clients reconnect elsewhere; a refused body left unread: see httpio
            if http1 and (
                self.drain.close_connections or (not read_in_full and _unread_asgi_body(scope))
            ):
                extra = [*(extra or ()), *CLOSE]
            headers = [(k.encode(), v.encode()) for k, v in response_headers(body, extra)]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.handle(
            scope["method"],
            raw.split(b"?", 1)[0].decode("latin-1"),
            scope.get("query_string", b"").decode("latin-1"),
            scope["headers"],
            read_body,
            respond,
            client=asgi_client(scope),
        )

    def not_ready_reason(self) -> str | None:
        """Why this instance must not get KMS traffic now (None: ready); see ``/ready``."""
        return not_ready_reason(
            started=self._started, drain=self.drain, stores=self.table.stores, health=self.health
        )

    async def _probe_path(self, method: str, path: str, respond: Respond) -> None:
        """``/ping`` (alive) and ``/ready`` (send me traffic): GET and HEAD, no auth, no HSM."""
        if method not in ("GET", "HEAD"):
            err = MethodNotAllowed(f"method not allowed: {path} accepts GET and HEAD")
            await respond(err.status, err.body(), [("allow", "GET, HEAD")])
            return
        status, body = 200, _PING_BODY
        if path == "/ready":
            reason = self.not_ready_reason()
            if reason is None:
                body = READY_BODY
            else:
                status, body = 503, orjson.dumps({"ready": False, "reason": reason})
        if method == "GET":
            await respond(status, body, None)
        else:
            await respond(status, b"", [("content-length", str(len(body)))])

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
        """Serve one HTTP request, whatever the server interface (ASGI or RSGI).

        ``client`` is the peer's address (host only), the key of the per-client unauthenticated
        budget; ``None`` when the server does not know it (all such requests share one budget).

        ``path`` and ``query`` are as on the wire (percent-encoded); ``headers`` are (name, value)
        pairs, lower-case names, str or bytes. ``read_body`` returns the whole body within
        :attr:`body_limit` (raising ``ValidationException`` or ``httpio.Disconnected``);
        ``respond(status, body, extra_headers)`` sends a JSON response.
        """
        started = time.monotonic()
        if path in _PROBE_PATHS:
            await self._probe_path(method, path, respond)
            return
        ctx = RequestContext(started=started, deadline=started + self._deadline_s, client=client)
        releases: list[Release] = []
        try:
            answer = await self._answer(method, path, query, headers, read_body, ctx, releases)
            if answer is not None:
                await respond(*answer)
        finally:
            # Every way out releases what admission granted, a cancelled request too (that is
            # no Exception); observers see the requests that were answered or disconnected.
            _release(releases)
            if ctx.status:
                self._notify(ctx)

    async def _answer(
        self,
        method: str,
        path: str,
        query: str,
        headers: RequestHeaders,
        read_body: ReadBody,
        ctx: RequestContext,
        releases: list[Release],
    ) -> tuple[int, bytes, Headers | None] | None:
        """Steps 2-9 for one request: the answer to send, or None when the client went away."""
        extra: Headers | None = None
        try:
            store, binding, key_id = self._route(path)
            ctx.store, ctx.key_id = store.name, key_id
            ctx.spec, ctx.operation = binding.spec, binding.spec.name
            if method != "POST":
                extra = [("allow", "POST")]
                raise MethodNotAllowed()
            unauthenticated: list[Release] = []
            try:
                _run_hooks(self.pre_auth, ctx, unauthenticated)
                body = await read_body()
                verified = sigv4.verify(
                    method=method,
                    path=path,
                    query=query,
                    headers=headers,
                    body=body,
                    lookup=store.lookup,
                    now=time.time(),
                    regions=store.regions,
                )
            except sigv4.SigV4Error as exc:
                ctx.extra["authFailure"] = _auth_cause(exc)  # the log says why; the answer not
                raise
            finally:
                _release(unauthenticated)
            ctx.access_key_id, ctx.region = verified.access_key_id, verified.region
            doc = decode_json(body)
            meta = logged_metadata(doc)  # bounded, for the logs (ARNs, VPC ids; no secrets)
            ctx.kms_request_id = meta.get("kmsRequestId")
            ctx.kms_operation = meta.get("kmsOperation")
            ctx.principal = meta.get("awsPrincipalArn")
            ctx.extra["metadata"] = meta
            # after the metadata: a throttled request's log line carries its kmsRequestId
            _run_hooks(self.admission, ctx, releases)
            result = await binding.run(self, store, key_id, doc, ctx)
            payload = orjson.dumps(result)
            ctx.finish(200, None)
            if self.before_answer is not None:
                self.before_answer(ctx)
        except Disconnected:
            ctx.finish(499, "ClientDisconnected")
            return None
        except Exception as exc:
            err = to_xks_error(exc) or InternalException()
            if isinstance(err, policy.PolicyDenied):
                ctx.deny_rule = err.policy_id
            if err.status == 500 and not ctx.extra.get("refused"):
                # The caller gets a fixed message; the cause (e.g. the failed HSM round-trip
                # check, a corrupt lifecycle object) is for the operator's log only.
                log.error(
                    "request failed",
                    exc_info=exc,
                    extra={
                        "fields": {
                            "operation": ctx.operation,
                            "keyStore": ctx.store,
                            "kmsRequestId": ctx.kms_request_id,
                        }
                    },
                )
            ctx.finish(err.status, err.error_name)
            return err.status, err.body(), extra
        return 200, payload, extra

    def _notify(self, ctx: RequestContext) -> None:
        for observer in self.observers:
            try:
                observer(ctx)
            except Exception:
                log.exception("request observer failed")


def _run_hooks(hooks: list[AdmissionHook], ctx: RequestContext, releases: list[Release]) -> None:
    """Run admission-style hooks in order; each release is kept as soon as it is granted, so a
    later hook's refusal still lets the caller release what the earlier ones hold."""
    for hook in hooks:
        release = hook(ctx)
        if release is not None:
            releases.append(release)


def _release(releases: list[Release]) -> None:
    for release in releases:
        try:
            release()
        except Exception:
            log.exception("admission release failed")
    releases.clear()


def _unread_asgi_body(scope: dict[str, Any]) -> bool:
    """:func:`~xksproxy.service.httpio.body_left_unread` for an ASGI scope (error paths only)."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in (b"content-length", b"transfer-encoding"):
            found[name] = value
    return body_left_unread(found.get(b"content-length"), found.get(b"transfer-encoding"))


def asgi_client(scope: dict[str, Any]) -> str | None:
    """The peer's host from an ASGI scope (``client`` is ``[host, port]`` or absent)."""
    client = scope.get("client")
    return str(client[0]) if client else None


def _auth_cause(exc: sigv4.SigV4Error) -> str:
    """A SigV4 failure's cause for the request log: its class as ``snake_case``
    (``UnknownAccessKey`` -> ``unknown_access_key``)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()
