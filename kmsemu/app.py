"""The starlette app: one route, ``POST /``, that authenticates and dispatches KMS calls.

Order per request: size-capped body, SigV4 for service ``kms`` (so a bad signature costs no
state access), then ``X-Amz-Target``/Content-Type, JSON, the operation. Every failure, including
an unexpected crash, leaves as a KMS JSON error, so SDKs always get a typed exception.

One log line per request (operation, status, error name, request id, milliseconds): never a
body, header value or credential, because bodies carry plaintext and data keys.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import sigv4
from kmsemu import protocol
from kmsemu.operations import Call, Emulator
from kmsemu.protocol import KmsError

log = logging.getLogger("kmsemu")
MAX_BODY_BYTES = 1 << 20
VIA_SERVICE_HEADER = "x-kmsemu-via-service"  # stands in for the AWS service calling KMS


def auth_error(exc: sigv4.SigV4Error) -> KmsError:
    """What KMS answers for each way a signature can be wrong."""
    if isinstance(exc, sigv4.MissingAuthorization):
        return KmsError(
            "MissingAuthenticationTokenException", "Request is missing Authentication Token"
        )
    if isinstance(exc, sigv4.UnknownAccessKey):
        return KmsError(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    if isinstance(exc, sigv4.RequestExpired):
        return KmsError("InvalidSignatureException", f"Signature expired: {exc.message}")
    if isinstance(exc, sigv4.SignatureMismatch):
        return KmsError(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method.",
        )
    return KmsError("InvalidSignatureException", exc.message)


def create_app(emulator: Emulator, credentials: Sequence[sigv4.Credential]) -> Starlette:
    """The ASGI app for one emulator; ``credentials`` are the AWS access keys it accepts."""
    by_id: dict[str, list[sigv4.Credential]] = {}
    for cred in credentials:
        by_id.setdefault(cred.access_key_id, []).append(cred)
    region = emulator.settings.region

    async def kms(request: Request) -> Response:
        started = time.perf_counter()
        request_id = str(uuid.uuid4())
        op = "-"
        try:
            body = await _read_body(request)
            scope = request.scope
            try:
                sigv4.verify(
                    method=request.method,
                    path=scope.get("raw_path") or scope["path"].encode(),
                    query=scope.get("query_string", b""),
                    headers=scope["headers"],
                    body=body,
                    lookup=lambda akid: by_id.get(akid, ()),
                    now=time.time(),
                    service="kms",
                    regions=[region],
                )
            except sigv4.SigV4Error as exc:
                raise auth_error(exc) from None
            op = protocol.operation_name(request.headers.get("x-amz-target"))
            protocol.check_content_type(request.headers.get("content-type"))
            doc = protocol.decode(body)
            call = Call(request_id, request.headers.get(VIA_SERVICE_HEADER) or None)
            result = await emulator.dispatch(op, doc, call)
            return _answer(200, protocol.encode(result), request_id, op, None, started)
        except KmsError as exc:
            return _answer(exc.status, exc.body(), request_id, op, exc.name, started)
        except Exception:
            log.exception("kmsemu: internal error in %s (request %s)", op[:64], request_id)
            err = KmsError("KMSInternalException", "The emulator failed; see its log.")
            return _answer(err.status, err.body(), request_id, op, err.name, started)

    async def not_post(request: Request, _exc: Exception | None = None) -> Response:
        """Anything but ``POST /``, whatever the method or path: a KMS JSON error too (also as
        the handler of the router's own 404/405, so no method gets a plain-text answer)."""
        exc = KmsError("UnknownOperationException", "KMS accepts only POST /")
        return _answer(exc.status, exc.body(), "-", "-", exc.name, time.perf_counter())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await emulator.pool.aclose()

    return Starlette(
        routes=[
            Route("/", kms, methods=["POST"]),
            Route("/{path:path}", not_post, methods=["GET", "PUT", "DELETE", "PATCH", "POST"]),
        ],
        exception_handlers={HTTPException: not_post},
        lifespan=lifespan,
    )


async def _read_body(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise KmsError("SerializationException", "request body is too large")
        chunks.append(chunk)
    return b"".join(chunks)


def _answer(
    status: int, body: bytes, request_id: str, op: str, error: str | None, started: float
) -> Response:
    elapsed_ms = (time.perf_counter() - started) * 1000
    log.info(
        "kmsemu: %s status=%d error=%s request_id=%s ms=%.1f",
        op[:64],
        status,
        error or "-",
        request_id,
        elapsed_ms,
    )
    headers: dict[str, Any] = {"x-amzn-RequestId": request_id}
    return Response(body, status_code=status, media_type=protocol.CONTENT_TYPE, headers=headers)
