"""Calls to XKS proxies, the way KMS makes them: SigV4 for ``kms-xks-proxy``, 250 ms, one retry.

One :class:`XksClient` per key store keeps one ``httpx.AsyncClient`` (keep-alive, TLS verified
against the operator's CA file), so the per-call cost is one request on a warm connection, as for
KMS. Every way a call can go wrong becomes one :class:`XksFailure` subclass; what KMS then tells
its caller (an exception name, a ConnectionErrorCode) is decided in :mod:`kmsemu.mapping`, not
here, because the same failure means different things to Connect, CreateKey and Encrypt.

Nothing in this module logs request or response bodies: they carry plaintext.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

import sigv4

DEADLINE_S = 0.250  # KMS's budget per proxy call: TCP + TLS + HTTP
SERVICE = "kms-xks-proxy"


class XksFailure(Exception):
    """A proxy call that did not produce a usable answer. ``str()`` is safe to show."""


class XksUnreachable(XksFailure):
    """No connection (refused, reset, DNS) or the connection broke mid-request."""


class XksTimeout(XksFailure):
    """No complete answer within the deadline, twice (the call and its one retry)."""


class XksTlsError(XksFailure):
    """The TLS handshake failed: untrusted certificate, wrong host name, no common cipher."""


class XksInvalidResponse(XksFailure):
    """An answer that is not what the XKS specification allows (shape, type or size)."""


class XksErrorResponse(XksFailure):
    """A well-formed XKS error: ``{"errorName": ..., "errorMessage": ...}`` with its status."""

    def __init__(self, status: int, error_name: str, error_message: str) -> None:
        super().__init__(
            f"{error_name} (HTTP {status})" + (f": {error_message}" if error_message else "")
        )
        self.status = status
        self.error_name = error_name
        self.error_message = error_message


@dataclass(frozen=True)
class ProxyConfig:
    """Where a key store's proxy is and how to authenticate to it."""

    uri_endpoint: str  # scheme://host[:port]
    uri_path: str  # [/prefix]/kms/xks/v1
    credential: sigv4.Credential
    region: str
    ca_file: str | None = None
    deadline_s: float = DEADLINE_S


@dataclass(frozen=True)
class EncryptResult:
    ciphertext: bytes
    iv: bytes
    tag: bytes
    metadata: bytes
    cdiv: bytes | None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(doc: Mapping[str, Any], name: str, *, required: bool = True) -> bytes:
    value = doc.get(name)
    if value is None and not required:
        return b""
    if not isinstance(value, str):
        raise XksInvalidResponse(f"response member {name} is missing or not a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise XksInvalidResponse(f"response member {name} is not valid base64") from None


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _is_tls_problem(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    text = str(exc).lower()
    return "certificate" in text or "ssl" in text or "tls" in text


class XksClient:
    """The four XKS calls against one proxy key store."""

    def __init__(
        self, config: ProxyConfig, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        """``transport`` replaces the network (tests pass an ``httpx.MockTransport``)."""
        self.config = config
        parts = urlsplit(config.uri_endpoint)
        self._host = parts.netloc
        self._base = config.uri_endpoint.rstrip("/") + config.uri_path.rstrip("/")
        self._path = config.uri_path.rstrip("/")
        verify: ssl.SSLContext | bool = (
            _tls_context(config.ca_file) if parts.scheme == "https" else False
        )
        self._http = httpx.AsyncClient(
            verify=verify,
            timeout=httpx.Timeout(config.deadline_s),
            limits=httpx.Limits(max_keepalive_connections=32, keepalive_expiry=60),
            trust_env=False,  # never route a key store's traffic through an env proxy
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def health(self, metadata: Mapping[str, str]) -> dict[str, Any]:
        """GetHealthStatus, with the shape checks KMS applies before it calls a proxy healthy."""
        doc = await self._call("/health", {"requestMetadata": dict(metadata)})
        size = doc.get("xksProxyFleetSize")
        fleet = doc.get("ekmFleetDetails")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise XksInvalidResponse("xksProxyFleetSize must be a positive integer")
        for name in ("xksProxyVendor", "xksProxyModel", "ekmVendor"):
            if not isinstance(doc.get(name), str):
                raise XksInvalidResponse(f"{name} must be a string")
        if not isinstance(fleet, list) or not 1 <= len(fleet) <= 10:
            raise XksInvalidResponse("ekmFleetDetails must list 1 to 10 entries")
        statuses = []
        for entry in fleet:
            status = entry.get("healthStatus") if isinstance(entry, dict) else None
            if status not in ("ACTIVE", "DEGRADED", "UNAVAILABLE"):
                raise XksInvalidResponse("ekmFleetDetails has an entry with a bad healthStatus")
            statuses.append(status)
        if all(s == "UNAVAILABLE" for s in statuses):
            raise XksInvalidResponse("every external key manager in the fleet is UNAVAILABLE")
        return doc

    async def key_metadata(self, xks_key_id: str, metadata: Mapping[str, str]) -> dict[str, Any]:
        """GetKeyMetadata: returns the checked document (keySpec, keyUsage, keyStatus)."""
        doc = await self._call(f"/keys/{xks_key_id}/metadata", {"requestMetadata": dict(metadata)})
        usage = doc.get("keyUsage")
        if not isinstance(doc.get("keySpec"), str) or not isinstance(doc.get("keyStatus"), str):
            raise XksInvalidResponse("keySpec and keyStatus must be strings")
        if not isinstance(usage, list) or not all(isinstance(u, str) for u in usage):
            raise XksInvalidResponse("keyUsage must be a list of strings")
        return doc

    async def encrypt(
        self, xks_key_id: str, plaintext: bytes, aad: bytes, metadata: Mapping[str, str]
    ) -> EncryptResult:
        """Encrypt with a CDIV requested; checks sizes and the CDIV as KMS does."""
        from kmsemu.crypto import cdiv  # local: crypto has no reason to import httpx

        body = {
            "requestMetadata": dict(metadata),
            "plaintext": _b64(plaintext),
            "encryptionAlgorithm": "AES_GCM",
            "additionalAuthenticatedData": _b64(aad),
            "ciphertextDataIntegrityValueAlgorithm": "SHA_256",
        }
        doc = await self._call(f"/keys/{xks_key_id}/encrypt", body)
        result = EncryptResult(
            ciphertext=_unb64(doc, "ciphertext"),
            iv=_unb64(doc, "initializationVector"),
            tag=_unb64(doc, "authenticationTag"),
            metadata=_unb64(doc, "ciphertextMetadata", required=False),
            cdiv=_unb64(doc, "ciphertextDataIntegrityValue", required=False) or None,
        )
        if len(result.ciphertext) != len(plaintext):
            raise XksInvalidResponse("ciphertext length differs from the plaintext length")
        if len(result.iv) not in (12, 16) or len(result.tag) != 16:
            raise XksInvalidResponse("initializationVector must be 12 or 16 bytes, tag 16")
        if len(result.metadata) > 20:
            raise XksInvalidResponse("ciphertextMetadata is longer than 20 bytes")
        if result.cdiv is None:
            raise XksInvalidResponse("ciphertextDataIntegrityValue was requested but is missing")
        expected = cdiv(aad, result.metadata, result.iv, result.ciphertext, result.tag)
        if expected != result.cdiv:
            raise XksInvalidResponse("ciphertextDataIntegrityValue does not match the ciphertext")
        return result

    async def decrypt(
        self,
        xks_key_id: str,
        *,
        ciphertext: bytes,
        iv: bytes,
        tag: bytes,
        aad: bytes,
        ciphertext_metadata: bytes,
        metadata: Mapping[str, str],
    ) -> bytes:
        body: dict[str, Any] = {
            "requestMetadata": dict(metadata),
            "ciphertext": _b64(ciphertext),
            "initializationVector": _b64(iv),
            "authenticationTag": _b64(tag),
            "encryptionAlgorithm": "AES_GCM",
            "additionalAuthenticatedData": _b64(aad),
        }
        if ciphertext_metadata:
            body["ciphertextMetadata"] = _b64(ciphertext_metadata)
        doc = await self._call(f"/keys/{xks_key_id}/decrypt", body)
        plaintext = _unb64(doc, "plaintext")
        if len(plaintext) != len(ciphertext):
            raise XksInvalidResponse("plaintext length differs from the ciphertext length")
        return plaintext

    async def _call(self, suffix: str, doc: Mapping[str, Any]) -> dict[str, Any]:
        """POST with the deadline; on timeout, once more (a fresh signature), then give up."""
        body = json.dumps(doc, separators=(",", ":")).encode()
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(self.config.deadline_s):
                    return await self._post(suffix, body)
            except (TimeoutError, httpx.TimeoutException):
                if attempt == 2:
                    raise XksTimeout(
                        f"no answer within {self.config.deadline_s * 1000:.0f} ms "
                        "(the call and its retry)"
                    ) from None
        raise AssertionError("unreachable")

    async def _post(self, suffix: str, body: bytes) -> dict[str, Any]:
        # Host is set explicitly so the signed value is byte-for-byte the one httpx sends.
        headers = {"Host": self._host, "Content-Type": "application/json"}
        headers.update(
            sigv4.sign(
                method="POST",
                host=self._host,
                path=self._path + suffix,
                headers=headers,
                body=body,
                credential=self.config.credential,
                region=self.config.region,
                service=SERVICE,
            )
        )
        try:
            resp = await self._http.post(self._base + suffix, content=body, headers=headers)
        except httpx.TimeoutException:
            raise
        except httpx.TransportError as exc:
            if _is_tls_problem(exc):
                raise XksTlsError(f"TLS to the proxy failed: {type(exc).__name__}") from None
            raise XksUnreachable(f"cannot reach the proxy: {type(exc).__name__}") from None
        try:
            parsed = json.loads(resp.content)
        except (ValueError, UnicodeDecodeError):
            parsed = None
        if resp.status_code != 200:
            if isinstance(parsed, dict) and isinstance(parsed.get("errorName"), str):
                message = parsed.get("errorMessage")
                raise XksErrorResponse(
                    resp.status_code,
                    _printable(parsed["errorName"], 64),
                    _printable(message, 200) if isinstance(message, str) else "",
                )
            raise XksInvalidResponse(f"HTTP {resp.status_code} without an XKS error body")
        if not isinstance(parsed, dict):
            raise XksInvalidResponse("the response body is not a JSON object")
        return parsed


def _printable(text: str, limit: int) -> str:
    """Proxy-supplied text cut to printable ASCII before it reaches our logs or callers."""
    return "".join(c for c in text if " " <= c <= "~")[:limit]


class ClientPool:
    """One :class:`XksClient` per key store, rebuilt when the store's configuration changes."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._clients: dict[str, XksClient] = {}
        self._transport = transport

    async def get(self, key_store_id: str, config: ProxyConfig) -> XksClient:
        client = self._clients.get(key_store_id)
        if client is not None and client.config == config:
            return client
        if client is not None:
            await client.aclose()
        client = self._clients[key_store_id] = XksClient(config, self._transport)
        return client

    async def drop(self, key_store_id: str) -> None:
        client = self._clients.pop(key_store_id, None)
        if client is not None:
            await client.aclose()

    async def aclose(self) -> None:
        for key_store_id in list(self._clients):
            await self.drop(key_store_id)
