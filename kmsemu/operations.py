"""The KMS operations: one coroutine per operation, registered by name in :data:`OPERATIONS`.

Each takes the decoded JSON request and returns the JSON response document; failures are
:class:`~kmsemu.protocol.KmsError` with KMS's exception names. The rules here are KMS's, not a
shortcut: keys in an external key store are usable only while their key store is CONNECTED, each
encryption is done twice (KMS-side material, then the proxy), CreateKey checks the external key's
metadata, and the proxy is asked with the request metadata KMS would send (see
:meth:`Emulator.request_metadata`).

Deliberate differences from KMS, all documented in docs/kmsemu.md: ConnectCustomKeyStore does
its health check inside the call (the state is CONNECTED or FAILED when it returns, instead of
CONNECTING for a while); key policies, grants, tags and DryRun are accepted and ignored.
"""

from __future__ import annotations

import os
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import sigv4
from kmsemu import crypto
from kmsemu.mapping import connection_error_code, crypto_error, key_store_admin_error
from kmsemu.protocol import (
    KmsError,
    get_context,
    get_int,
    get_str,
    need_blob,
    need_str,
    validation,
)
from kmsemu.store import Alias, Conflict, Key, KeyStore, Store
from kmsemu.xksclient import ClientPool, ProxyConfig, XksClient, XksErrorResponse, XksFailure

Request = dict[str, Any]
Response = dict[str, Any]

CONNECTED, DISCONNECTED, FAILED = "CONNECTED", "DISCONNECTED", "FAILED"
XKS_ORIGIN, LOCAL_ORIGIN = "EXTERNAL_KEY_STORE", "AWS_KMS"
SYMMETRIC_DEFAULT = "SYMMETRIC_DEFAULT"
MAX_PLAINTEXT = 4096
MAX_DATA_KEY = 1024
_URI_PATH = re.compile(r"^(/[A-Za-z0-9_-]+)*/kms/xks/v1$")
_XKS_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_ALIAS = re.compile(r"^alias/[A-Za-z0-9/_-]{1,250}$")


@dataclass(frozen=True)
class Settings:
    """What the operator chose at start-up (``kmsemu.cli``)."""

    region: str
    account_id: str
    principal_arn: str
    proxy_ca_file: str | None = None
    allow_plain_http: bool = False
    proxy_deadline_s: float = 0.250


@dataclass(frozen=True)
class Call:
    """Per-request facts: KMS's request id (sent to proxies too) and the calling service."""

    request_id: str
    via_service: str | None = None


Handler = Callable[["Emulator", Request, Call], Awaitable[Response]]
OPERATIONS: dict[str, Handler] = {}


def operation(name: str) -> Callable[[Handler], Handler]:
    """Register a handler under its KMS operation name."""

    def register(fn: Handler) -> Handler:
        OPERATIONS[name] = fn
        return fn

    return register


class Emulator:
    """State, settings and proxy clients shared by all operations."""

    def __init__(self, store: Store, settings: Settings, pool: ClientPool | None = None) -> None:
        self.store = store
        self.settings = settings
        self.pool = pool or ClientPool()

    async def dispatch(self, name: str, request: Request, call: Call) -> Response:
        handler = OPERATIONS.get(name)
        if handler is None:
            raise KmsError("UnknownOperationException", f"unknown operation {name[:64]!r}")
        return await handler(self, request, call)

    # ---- helpers shared by several operations

    def key_arn(self, key_id: str) -> str:
        return f"arn:aws:kms:{self.settings.region}:{self.settings.account_id}:key/{key_id}"

    def alias_arn(self, name: str) -> str:
        return f"arn:aws:kms:{self.settings.region}:{self.settings.account_id}:{name}"

    def request_metadata(self, operation: str, call: Call, key_arn: str | None) -> dict[str, str]:
        """requestMetadata as KMS fills it for key operations (the principal is our caller)."""
        md = {
            "awsPrincipalArn": self.settings.principal_arn,
            "kmsOperation": operation,
            "kmsRequestId": call.request_id,
        }
        if key_arn is not None:
            md["kmsKeyArn"] = key_arn
        if call.via_service:
            md["kmsViaService"] = call.via_service
        return md

    async def client_for(self, ks: KeyStore) -> XksClient:
        config = ProxyConfig(
            uri_endpoint=ks.uri_endpoint,
            uri_path=ks.uri_path,
            credential=sigv4.Credential(ks.access_key_id, ks.secret),
            region=self.settings.region,
            ca_file=self.settings.proxy_ca_file,
            deadline_s=self.settings.proxy_deadline_s,
        )
        return await self.pool.get(ks.id, config)

    async def health(self, ks: KeyStore, operation: str, call: Call) -> None:
        """GetHealthStatus against a store's proxy; raises XksFailure."""
        client = await self.client_for(ks)
        await client.health({"kmsOperation": operation, "kmsRequestId": call.request_id})

    def need_key_store(self, ks_id: str) -> KeyStore:
        ks = self.store.key_store(ks_id)
        if ks is None:
            raise KmsError(
                "CustomKeyStoreNotFoundException", f"Custom key store {ks_id[:64]!r} not found."
            )
        return ks

    def resolve(self, ref: str, *, aliases: bool = True) -> Key:
        """A key by id, key ARN, alias name or alias ARN (NotFoundException otherwise)."""
        key_id: str | None = ref
        if ref.startswith("arn:"):
            parts = ref.split(":", 5)
            if (
                len(parts) != 6
                or parts[2] != "kms"
                or parts[3] != self.settings.region
                or parts[4] != self.settings.account_id
            ):
                raise KmsError("NotFoundException", f"Invalid arn {ref[:256]}")
            ref = parts[5]
            key_id = ref[4:] if ref.startswith("key/") else ref
        if key_id is not None and key_id.startswith("alias/"):
            alias = self.store.alias(key_id) if aliases else None
            if alias is None:
                raise KmsError("NotFoundException", f"Alias {self.alias_arn(key_id)} is not found.")
            key_id = alias.key_id
        key = self.store.key(key_id) if key_id else None
        if key is None:
            raise KmsError("NotFoundException", f"Key '{ref[:256]}' does not exist")
        return key

    def shown_state(self, key: Key) -> str:
        """KeyState as DescribeKey reports it: Unavailable while an XKS store is not connected."""
        if key.origin == XKS_ORIGIN and key.state in ("Enabled", "Disabled"):
            ks = self.store.key_store(key.key_store_id or "")
            if ks is None or ks.connection_state != CONNECTED:
                return "Unavailable"
        return key.state

    def usable(self, key: Key) -> KeyStore | None:
        """Refuse keys that cannot do cryptography now; returns the key's store (XKS keys)."""
        arn = key.arn
        if key.state == "Disabled":
            raise KmsError("DisabledException", f"{arn} is disabled.")
        if key.state == "PendingDeletion":
            raise KmsError("KMSInvalidStateException", f"{arn} is pending deletion.")
        if key.origin != XKS_ORIGIN:
            return None
        ks = self.store.key_store(key.key_store_id or "")
        if ks is None or ks.connection_state != CONNECTED:
            raise KmsError(
                "KMSInvalidStateException",
                f"{arn} is unavailable: its custom key store {key.key_store_id} is not connected.",
            )
        return ks

    async def seal(
        self, key: Key, plaintext: bytes, ctx: dict[str, str], op: str, call: Call
    ) -> bytes:
        """Encrypt for ``key``: the local layer, then (XKS keys) the proxy layer."""
        ks = self.usable(key)
        if ks is None:
            iv, sealed = crypto.local_encrypt(
                key.material, crypto.FORMAT_LOCAL, key.id, plaintext, ctx
            )
            return crypto.Blob(crypto.FORMAT_LOCAL, key.id, iv, sealed).pack()
        iv, sealed = crypto.local_encrypt(key.material, crypto.FORMAT_XKS, key.id, plaintext, ctx)
        client = await self.client_for(ks)
        try:
            out = await client.encrypt(
                key.xks_key_id or "",
                sealed,
                crypto.xks_aad(key.arn, ctx),
                self.request_metadata(op, call, key.arn),
            )
        except XksFailure as exc:
            raise crypto_error(exc, decrypting=False) from None
        return crypto.Blob(
            crypto.FORMAT_XKS, key.id, iv, out.ciphertext, out.iv, out.tag, out.metadata
        ).pack()

    async def open(
        self, data: bytes, ctx: dict[str, str], key_ref: str | None, op: str, call: Call
    ) -> tuple[Key, bytes]:
        """Decrypt a blob: find its key, check the caller's KeyId, undo both layers."""
        bad = KmsError("InvalidCiphertextException", "The ciphertext is not valid for this key.")
        try:
            blob = crypto.Blob.unpack(data)
        except crypto.BlobError:
            raise bad from None
        key = self.store.key(blob.key_id)
        if key_ref is not None:
            wanted = self.resolve(key_ref)
            if key is None or wanted.id != key.id:
                raise KmsError(
                    "IncorrectKeyException",
                    "The key ID in the request does not identify the KMS key that encrypted "
                    "the ciphertext.",
                )
        if key is None:
            raise bad
        ks = self.usable(key)
        if (blob.fmt == crypto.FORMAT_XKS) != (ks is not None):
            raise bad
        sealed = blob.ciphertext
        if ks is not None:
            client = await self.client_for(ks)
            try:
                sealed = await client.decrypt(
                    key.xks_key_id or "",
                    ciphertext=blob.ciphertext,
                    iv=blob.xks_iv,
                    tag=blob.xks_tag,
                    aad=crypto.xks_aad(key.arn, ctx),
                    ciphertext_metadata=blob.xks_metadata,
                    metadata=self.request_metadata(op, call, key.arn),
                )
            except XksFailure as exc:
                raise crypto_error(exc, decrypting=True) from None
        try:
            return key, crypto.local_decrypt(
                key.material, blob.fmt, key.id, blob.local_iv, sealed, ctx
            )
        except crypto.BlobError:
            raise bad from None

    def key_metadata(self, key: Key) -> Response:
        md: Response = {
            "AWSAccountId": self.settings.account_id,
            "KeyId": key.id,
            "Arn": key.arn,
            "CreationDate": key.creation_date,
            "Enabled": key.state == "Enabled",
            "Description": key.description,
            "KeyUsage": "ENCRYPT_DECRYPT",
            "KeyState": self.shown_state(key),
            "Origin": key.origin,
            "KeyManager": "CUSTOMER",
            "CustomerMasterKeySpec": SYMMETRIC_DEFAULT,
            "KeySpec": SYMMETRIC_DEFAULT,
            "EncryptionAlgorithms": [SYMMETRIC_DEFAULT],
            "MultiRegion": False,
        }
        if key.deletion_date is not None:
            md["DeletionDate"] = key.deletion_date
        if key.origin == XKS_ORIGIN:
            md["CustomKeyStoreId"] = key.key_store_id
            md["XksKeyConfiguration"] = {"Id": key.xks_key_id}
        return md

    def key_store_doc(self, ks: KeyStore) -> Response:
        doc: Response = {
            "CustomKeyStoreId": ks.id,
            "CustomKeyStoreName": ks.name,
            "CustomKeyStoreType": XKS_ORIGIN,
            "ConnectionState": ks.connection_state,
            "CreationDate": ks.creation_date,
            "XksProxyConfiguration": {
                "Connectivity": ks.connectivity,
                "AccessKeyId": ks.access_key_id,
                "UriEndpoint": ks.uri_endpoint,
                "UriPath": ks.uri_path,
            },
        }
        if ks.vpc_endpoint_service_name:
            doc["XksProxyConfiguration"]["VpcEndpointServiceName"] = ks.vpc_endpoint_service_name
        if ks.connection_state == FAILED and ks.connection_error_code:
            doc["ConnectionErrorCode"] = ks.connection_error_code
        return doc


# ---- parameter checks shared by several operations


def _algorithm(req: Request, name: str = "EncryptionAlgorithm") -> str:
    value = get_str(req, name) or SYMMETRIC_DEFAULT
    if value != SYMMETRIC_DEFAULT:
        raise KmsError(
            "InvalidKeyUsageException",
            f"{name} {value[:32]!r} is not valid for a symmetric encryption KMS key.",
        )
    return value


def _endpoint(value: str, allow_plain_http: bool) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise validation("XksProxyUriEndpoint must be https://HOST[:PORT]")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise validation("XksProxyUriEndpoint must not have a path, query or user info")
    if parts.scheme == "http" and not allow_plain_http:
        raise validation(
            "XksProxyUriEndpoint must use https (start the emulator with --allow-plain-http "
            "to call a plain HTTP proxy)"
        )
    return value.rstrip("/")


def _uri_path(value: str) -> str:
    if len(value) > 128 or not _URI_PATH.match(value):
        raise validation(
            "XksProxyUriPath must be [/prefix]/kms/xks/v1 (at most 128 characters of "
            "a-z, A-Z, 0-9, '/', '-' and '_')"
        )
    return value


def _credential(req: Request) -> sigv4.Credential:
    cred = req.get("XksProxyAuthenticationCredential")
    if not isinstance(cred, dict):
        raise validation("XksProxyAuthenticationCredential is required")
    akid = need_str(cred, "AccessKeyId", max_len=30)
    secret = need_str(cred, "RawSecretAccessKey", max_len=64)
    try:
        sigv4.validate_access_key_id(akid)
        sigv4.validate_secret(secret)
    except ValueError as exc:
        raise validation(f"XksProxyAuthenticationCredential: {exc}") from None
    return sigv4.Credential(akid, secret)


def _connectivity(req: Request) -> tuple[str, str | None]:
    connectivity = get_str(req, "XksProxyConnectivity") or "PUBLIC_ENDPOINT"
    service = get_str(req, "XksProxyVpcEndpointServiceName", max_len=64)
    if connectivity not in ("PUBLIC_ENDPOINT", "VPC_ENDPOINT_SERVICE"):
        raise validation("XksProxyConnectivity must be PUBLIC_ENDPOINT or VPC_ENDPOINT_SERVICE")
    if connectivity == "VPC_ENDPOINT_SERVICE" and not service:
        raise validation("XksProxyVpcEndpointServiceName is required for VPC_ENDPOINT_SERVICE")
    # VPC connectivity is accepted and treated as public: the endpoint is called directly.
    return connectivity, service


def _conflict(exc: Conflict, detail: str) -> KmsError:
    return KmsError(str(exc), detail)


def _page(req: Request, items: list[Any], *, default: int = 100) -> tuple[list[Any], Response]:
    limit = get_int(req, "Limit", low=1, high=1000) or default
    marker = get_str(req, "Marker", max_len=32)
    start = 0
    if marker:
        if not marker.isdigit():
            raise KmsError("InvalidMarkerException", "Marker is not valid.")
        start = int(marker)
    chunk = items[start : start + limit]
    extra: Response = {"Truncated": start + limit < len(items)}
    if extra["Truncated"]:
        extra["NextMarker"] = str(start + limit)
    return chunk, extra


# ---- custom key stores


@operation("CreateCustomKeyStore")
async def create_custom_key_store(emu: Emulator, req: Request, call: Call) -> Response:
    name = need_str(req, "CustomKeyStoreName", max_len=256)
    kind = get_str(req, "CustomKeyStoreType") or "AWS_CLOUDHSM"
    if kind != XKS_ORIGIN:
        raise KmsError(
            "UnsupportedOperationException",
            "This emulator supports only CustomKeyStoreType EXTERNAL_KEY_STORE.",
        )
    endpoint = _endpoint(
        need_str(req, "XksProxyUriEndpoint", max_len=256), emu.settings.allow_plain_http
    )
    path = _uri_path(need_str(req, "XksProxyUriPath", max_len=128))
    connectivity, vpc_service = _connectivity(req)
    cred = _credential(req)
    ks = KeyStore(
        id="cks-" + secrets.token_hex(9)[:17],
        name=name,
        uri_endpoint=endpoint,
        uri_path=path,
        connectivity=connectivity,
        vpc_endpoint_service_name=vpc_service,
        access_key_id=cred.access_key_id,
        secret=cred.secret,
        connection_state=DISCONNECTED,
        connection_error_code=None,
        creation_date=time.time(),
    )
    if emu.store.key_store_by_name(name) is not None:
        raise KmsError(
            "CustomKeyStoreNameInUseException", f"Custom key store name {name!r} is in use."
        )
    if any((o.uri_endpoint, o.uri_path) == (endpoint, path) for o in emu.store.key_stores()):
        raise KmsError(
            "XksProxyUriInUseException",
            "XksProxyUriEndpoint and XksProxyUriPath are already used by another key store.",
        )
    # Like KMS, prove the proxy answers with these settings before anything is stored.
    try:
        await emu.health(ks, "CreateCustomKeyStore", call)
    except XksFailure as exc:
        raise key_store_admin_error(exc) from None
    finally:
        await emu.pool.drop(ks.id)
    try:
        emu.store.add_key_store(ks)
    except Conflict as exc:
        raise _conflict(exc, "The key store name or proxy URI is already in use.") from None
    return {"CustomKeyStoreId": ks.id}


@operation("DescribeCustomKeyStores")
async def describe_custom_key_stores(emu: Emulator, req: Request, call: Call) -> Response:
    ks_id = get_str(req, "CustomKeyStoreId", max_len=64)
    name = get_str(req, "CustomKeyStoreName", max_len=256)
    stores = emu.store.key_stores()
    if ks_id is not None:
        stores = [s for s in stores if s.id == ks_id]
    if name is not None:
        stores = [s for s in stores if s.name == name]
    if (ks_id is not None or name is not None) and not stores:
        raise KmsError("CustomKeyStoreNotFoundException", "No custom key store matches.")
    chunk, extra = _page(req, stores)
    return {"CustomKeyStores": [emu.key_store_doc(s) for s in chunk], **extra}


@operation("ConnectCustomKeyStore")
async def connect_custom_key_store(emu: Emulator, req: Request, call: Call) -> Response:
    ks = emu.need_key_store(need_str(req, "CustomKeyStoreId", max_len=64))
    if ks.connection_state == CONNECTED:
        return {}
    if ks.connection_state == FAILED:
        raise KmsError(
            "CustomKeyStoreInvalidStateException",
            f"Custom key store {ks.id} is FAILED: disconnect it (DisconnectCustomKeyStore), "
            "fix the cause in its ConnectionErrorCode and connect again.",
        )
    try:
        await emu.health(ks, "ConnectCustomKeyStore", call)
    except XksFailure as exc:
        emu.store.set_connection(ks.id, FAILED, connection_error_code(exc))
        await emu.pool.drop(ks.id)
        return {}
    emu.store.set_connection(ks.id, CONNECTED, None)
    return {}


@operation("DisconnectCustomKeyStore")
async def disconnect_custom_key_store(emu: Emulator, req: Request, call: Call) -> Response:
    ks = emu.need_key_store(need_str(req, "CustomKeyStoreId", max_len=64))
    emu.store.set_connection(ks.id, DISCONNECTED, None)
    await emu.pool.drop(ks.id)
    return {}


@operation("UpdateCustomKeyStore")
async def update_custom_key_store(emu: Emulator, req: Request, call: Call) -> Response:
    ks = emu.need_key_store(need_str(req, "CustomKeyStoreId", max_len=64))
    new = ks
    if (name := get_str(req, "NewCustomKeyStoreName", max_len=256)) is not None:
        new = replace(new, name=name)
    if (endpoint := get_str(req, "XksProxyUriEndpoint", max_len=256)) is not None:
        new = replace(new, uri_endpoint=_endpoint(endpoint, emu.settings.allow_plain_http))
    if (path := get_str(req, "XksProxyUriPath", max_len=128)) is not None:
        new = replace(new, uri_path=_uri_path(path))
    if "XksProxyConnectivity" in req or "XksProxyVpcEndpointServiceName" in req:
        connectivity, vpc = _connectivity(req)
        new = replace(new, connectivity=connectivity, vpc_endpoint_service_name=vpc)
    if "XksProxyAuthenticationCredential" in req:
        cred = _credential(req)
        new = replace(new, access_key_id=cred.access_key_id, secret=cred.secret)
    for field in ("CloudHsmClusterId", "KeyStorePassword"):
        if field in req:
            raise validation(f"{field} applies to AWS CloudHSM key stores only")
    where = (new.uri_endpoint, new.uri_path, new.connectivity, new.vpc_endpoint_service_name)
    was = (ks.uri_endpoint, ks.uri_path, ks.connectivity, ks.vpc_endpoint_service_name)
    if ks.connection_state == CONNECTED:
        if where != was:
            raise KmsError(
                "CustomKeyStoreInvalidStateException",
                "Disconnect the key store before changing its proxy endpoint, path or "
                "connectivity.",
            )
        if (new.access_key_id, new.secret) != (ks.access_key_id, ks.secret):
            try:
                await emu.health(new, "UpdateCustomKeyStore", call)
            except XksFailure as exc:
                await emu.pool.drop(ks.id)
                raise key_store_admin_error(exc) from None
    try:
        emu.store.update_key_store(new)
    except Conflict as exc:
        raise _conflict(exc, "The key store name or proxy URI is already in use.") from None
    await emu.pool.drop(ks.id)
    return {}


@operation("DeleteCustomKeyStore")
async def delete_custom_key_store(emu: Emulator, req: Request, call: Call) -> Response:
    ks = emu.need_key_store(need_str(req, "CustomKeyStoreId", max_len=64))
    if ks.connection_state != DISCONNECTED:
        raise KmsError(
            "CustomKeyStoreInvalidStateException",
            f"Custom key store {ks.id} must be DISCONNECTED to be deleted.",
        )
    if emu.store.count_keys_in_store(ks.id):
        raise KmsError(
            "CustomKeyStoreHasCMKsException",
            f"Custom key store {ks.id} still has KMS keys: delete them first.",
        )
    emu.store.delete_key_store(ks.id)
    return {}


# ---- keys


@operation("CreateKey")
async def create_key(emu: Emulator, req: Request, call: Call) -> Response:
    description = get_str(req, "Description", max_len=8192) or ""
    usage = get_str(req, "KeyUsage") or "ENCRYPT_DECRYPT"
    spec = get_str(req, "KeySpec") or get_str(req, "CustomerMasterKeySpec") or SYMMETRIC_DEFAULT
    origin = get_str(req, "Origin") or LOCAL_ORIGIN
    if usage != "ENCRYPT_DECRYPT" or spec != SYMMETRIC_DEFAULT:
        raise KmsError(
            "UnsupportedOperationException",
            "This emulator creates symmetric encryption keys only (SYMMETRIC_DEFAULT, "
            "ENCRYPT_DECRYPT).",
        )
    if req.get("MultiRegion"):
        raise KmsError("UnsupportedOperationException", "Multi-Region keys are not supported.")
    key_id = str(uuid.uuid4())
    arn = emu.key_arn(key_id)
    ks_id = get_str(req, "CustomKeyStoreId", max_len=64)
    xks_key_id = get_str(req, "XksKeyId", max_len=128)
    if origin == LOCAL_ORIGIN:
        if ks_id is not None or xks_key_id is not None:
            raise validation("CustomKeyStoreId and XksKeyId require Origin EXTERNAL_KEY_STORE")
    elif origin == XKS_ORIGIN:
        if ks_id is None:
            raise validation("Origin EXTERNAL_KEY_STORE requires CustomKeyStoreId")
        if xks_key_id is None or not _XKS_KEY_ID.match(xks_key_id):
            raise validation(
                "XksKeyId is required: 1-128 characters of A-Z, a-z, 0-9, '.', '-', '_'"
            )
        await _check_external_key(emu, emu.need_key_store(ks_id), xks_key_id, arn, call)
    else:
        raise KmsError("UnsupportedOperationException", f"Origin {origin[:32]!r} is not supported.")
    key = Key(
        id=key_id,
        arn=arn,
        description=description,
        state="Enabled",
        origin=origin,
        key_store_id=ks_id,
        xks_key_id=xks_key_id,
        material=crypto.new_key_material(),
        creation_date=time.time(),
        deletion_date=None,
    )
    try:
        emu.store.add_key(key)
    except Conflict:
        raise KmsError(
            "XksKeyAlreadyInUseException",
            f"XksKeyId {xks_key_id!r} is already associated with a KMS key in this key store.",
        ) from None
    return {"KeyMetadata": emu.key_metadata(key)}


async def _check_external_key(
    emu: Emulator, ks: KeyStore, xks_key_id: str, arn: str, call: Call
) -> None:
    """KMS's CreateKey checks: the external key exists and is AES_256, ENCRYPT+DECRYPT, ENABLED."""
    if ks.connection_state != CONNECTED:
        raise KmsError(
            "CustomKeyStoreInvalidStateException",
            f"Custom key store {ks.id} is not connected.",
        )
    client = await emu.client_for(ks)
    try:
        doc = await client.key_metadata(xks_key_id, emu.request_metadata("CreateKey", call, arn))
    except XksFailure as exc:
        if isinstance(exc, XksErrorResponse) and exc.error_name == "KeyNotFoundException":
            raise KmsError(
                "XksKeyNotFoundException",
                f"The external key store proxy cannot find XksKeyId {xks_key_id!r}.",
            ) from None
        raise crypto_error(exc, decrypting=False) from None
    problems = []
    if doc.get("keySpec") != "AES_256":
        problems.append("its keySpec is not AES_256")
    if not {"ENCRYPT", "DECRYPT"} <= set(doc.get("keyUsage", [])):
        problems.append("its keyUsage does not include both ENCRYPT and DECRYPT")
    if doc.get("keyStatus") != "ENABLED":
        problems.append("its keyStatus is not ENABLED")
    if problems:
        raise KmsError(
            "XksKeyInvalidConfigurationException",
            f"XksKeyId {xks_key_id!r} cannot back a KMS key: " + "; ".join(problems) + ".",
        )


@operation("DescribeKey")
async def describe_key(emu: Emulator, req: Request, call: Call) -> Response:
    return {"KeyMetadata": emu.key_metadata(emu.resolve(need_str(req, "KeyId")))}


@operation("ListKeys")
async def list_keys(emu: Emulator, req: Request, call: Call) -> Response:
    chunk, extra = _page(req, emu.store.keys())
    return {"Keys": [{"KeyId": k.id, "KeyArn": k.arn} for k in chunk], **extra}


@operation("EnableKey")
async def enable_key(emu: Emulator, req: Request, call: Call) -> Response:
    return _set_enabled(emu, req, "Enabled")


@operation("DisableKey")
async def disable_key(emu: Emulator, req: Request, call: Call) -> Response:
    return _set_enabled(emu, req, "Disabled")


def _set_enabled(emu: Emulator, req: Request, state: str) -> Response:
    key = emu.resolve(need_str(req, "KeyId"), aliases=False)
    if key.state == "PendingDeletion":
        raise KmsError("KMSInvalidStateException", f"{key.arn} is pending deletion.")
    emu.store.set_key_state(key.id, state, None)
    return {}


@operation("ScheduleKeyDeletion")
async def schedule_key_deletion(emu: Emulator, req: Request, call: Call) -> Response:
    key = emu.resolve(need_str(req, "KeyId"), aliases=False)
    days = get_int(req, "PendingWindowInDays", low=7, high=30) or 30
    if key.state == "PendingDeletion":
        raise KmsError("KMSInvalidStateException", f"{key.arn} is pending deletion.")
    when = time.time() + days * 86400
    emu.store.set_key_state(key.id, "PendingDeletion", when)
    return {
        "KeyId": key.arn,
        "DeletionDate": when,
        "KeyState": "PendingDeletion",
        "PendingWindowInDays": days,
    }


@operation("CancelKeyDeletion")
async def cancel_key_deletion(emu: Emulator, req: Request, call: Call) -> Response:
    key = emu.resolve(need_str(req, "KeyId"), aliases=False)
    if key.state != "PendingDeletion":
        raise KmsError("KMSInvalidStateException", f"{key.arn} is not pending deletion.")
    emu.store.set_key_state(key.id, "Disabled", None)  # KMS leaves a cancelled key disabled
    return {"KeyId": key.arn}


# ---- aliases


def _alias_name(req: Request) -> str:
    name = need_str(req, "AliasName", max_len=256)
    if not _ALIAS.match(name):
        raise validation("AliasName must be alias/ followed by a-z, A-Z, 0-9, '/', '_', '-'")
    if name.startswith("alias/aws/"):
        raise validation("Alias names beginning with alias/aws/ are reserved for AWS")
    return name


@operation("CreateAlias")
async def create_alias(emu: Emulator, req: Request, call: Call) -> Response:
    name = _alias_name(req)
    key = emu.resolve(need_str(req, "TargetKeyId"), aliases=False)
    if key.state == "PendingDeletion":
        raise KmsError("KMSInvalidStateException", f"{key.arn} is pending deletion.")
    now = time.time()
    try:
        emu.store.add_alias(Alias(name, key.id, now, now))
    except Conflict:
        raise KmsError(
            "AlreadyExistsException", f"An alias with the name {emu.alias_arn(name)} already exists"
        ) from None
    return {}


@operation("UpdateAlias")
async def update_alias(emu: Emulator, req: Request, call: Call) -> Response:
    name = _alias_name(req)
    if emu.store.alias(name) is None:
        raise KmsError("NotFoundException", f"Alias {emu.alias_arn(name)} is not found.")
    key = emu.resolve(need_str(req, "TargetKeyId"), aliases=False)
    emu.store.update_alias(name, key.id, time.time())
    return {}


@operation("DeleteAlias")
async def delete_alias(emu: Emulator, req: Request, call: Call) -> Response:
    name = _alias_name(req)
    if emu.store.alias(name) is None:
        raise KmsError("NotFoundException", f"Alias {emu.alias_arn(name)} is not found.")
    emu.store.delete_alias(name)
    return {}


@operation("ListAliases")
async def list_aliases(emu: Emulator, req: Request, call: Call) -> Response:
    ref = get_str(req, "KeyId")
    key_id = emu.resolve(ref, aliases=False).id if ref else None
    chunk, extra = _page(req, emu.store.aliases(key_id))
    return {
        "Aliases": [
            {
                "AliasName": a.name,
                "AliasArn": emu.alias_arn(a.name),
                "TargetKeyId": a.key_id,
                "CreationDate": a.creation_date,
                "LastUpdatedDate": a.last_updated,
            }
            for a in chunk
        ],
        **extra,
    }


# ---- cryptographic operations


@operation("Encrypt")
async def encrypt(emu: Emulator, req: Request, call: Call) -> Response:
    key = emu.resolve(need_str(req, "KeyId"))
    plaintext = need_blob(req, "Plaintext", max_len=MAX_PLAINTEXT)
    algorithm = _algorithm(req)
    blob = await emu.seal(key, plaintext, get_context(req), "Encrypt", call)
    return {"CiphertextBlob": blob, "KeyId": key.arn, "EncryptionAlgorithm": algorithm}


@operation("Decrypt")
async def decrypt(emu: Emulator, req: Request, call: Call) -> Response:
    data = need_blob(req, "CiphertextBlob", max_len=crypto.MAX_BLOB_BYTES)
    algorithm = _algorithm(req)
    key, plaintext = await emu.open(data, get_context(req), get_str(req, "KeyId"), "Decrypt", call)
    return {"Plaintext": plaintext, "KeyId": key.arn, "EncryptionAlgorithm": algorithm}


def _data_key_size(req: Request) -> int:
    size = get_int(req, "NumberOfBytes", low=1, high=MAX_DATA_KEY)
    spec = get_str(req, "KeySpec")
    if (size is None) == (spec is None):
        raise validation("Specify either NumberOfBytes or KeySpec, not both and not neither")
    if spec is not None:
        sizes = {"AES_256": 32, "AES_128": 16}
        if spec not in sizes:
            raise validation("KeySpec must be AES_256 or AES_128")
        return sizes[spec]
    assert size is not None
    return size


async def _generate(emu: Emulator, req: Request, call: Call, op: str) -> tuple[Key, bytes, bytes]:
    key = emu.resolve(need_str(req, "KeyId"))
    size = _data_key_size(req)
    plaintext = os.urandom(size)
    blob = await emu.seal(key, plaintext, get_context(req), op, call)
    return key, plaintext, blob


@operation("GenerateDataKey")
async def generate_data_key(emu: Emulator, req: Request, call: Call) -> Response:
    key, plaintext, blob = await _generate(emu, req, call, "GenerateDataKey")
    return {"CiphertextBlob": blob, "Plaintext": plaintext, "KeyId": key.arn}


@operation("GenerateDataKeyWithoutPlaintext")
async def generate_data_key_without_plaintext(emu: Emulator, req: Request, call: Call) -> Response:
    key, _plaintext, blob = await _generate(emu, req, call, "GenerateDataKeyWithoutPlaintext")
    return {"CiphertextBlob": blob, "KeyId": key.arn}


@operation("ReEncrypt")
async def re_encrypt(emu: Emulator, req: Request, call: Call) -> Response:
    data = need_blob(req, "CiphertextBlob", max_len=crypto.MAX_BLOB_BYTES)
    src_alg = _algorithm(req, "SourceEncryptionAlgorithm")
    dst_alg = _algorithm(req, "DestinationEncryptionAlgorithm")
    destination = emu.resolve(need_str(req, "DestinationKeyId"))
    source, plaintext = await emu.open(
        data,
        get_context(req, "SourceEncryptionContext"),
        get_str(req, "SourceKeyId"),
        "ReEncrypt",
        call,
    )
    blob = await emu.seal(
        destination, plaintext, get_context(req, "DestinationEncryptionContext"), "ReEncrypt", call
    )
    return {
        "CiphertextBlob": blob,
        "SourceKeyId": source.arn,
        "KeyId": destination.arn,
        "SourceEncryptionAlgorithm": src_alg,
        "DestinationEncryptionAlgorithm": dst_alg,
    }


@operation("GenerateRandom")
async def generate_random(emu: Emulator, req: Request, call: Call) -> Response:
    size = get_int(req, "NumberOfBytes", low=1, high=MAX_DATA_KEY, required=True)
    if get_str(req, "CustomKeyStoreId") is not None:
        raise KmsError(
            "UnsupportedOperationException",
            "GenerateRandom does not support external key stores.",
        )
    assert size is not None
    return {"Plaintext": os.urandom(size)}
