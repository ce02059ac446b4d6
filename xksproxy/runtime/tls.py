"""TLS for the KMS listener: self-signed certificates, the server TLS policy, mTLS subject pinning.

Why this module exists: XKS (spec §7) requires TLS 1.2+ with forward-secret AEAD suites and, when
mTLS is on, that a client certificate from another CA *or with another subject* never gets a
request through. The two servers we support do TLS differently:

* granian terminates TLS in Rust (rustls). rustls only implements forward-secret AEAD suites, so
  the suite policy holds by construction; we only lower its minimum version to TLS 1.2. It can
  check that a client certificate chains to a CA, but it never shows the certificate to Python,
  so it cannot pin the subject.
* hypercorn uses Python's ``ssl`` (OpenSSL). We restrict the suites explicitly and pin the client
  subject *inside the handshake*: :class:`PinnedSSLObject` checks the peer certificate as soon as
  OpenSSL accepted the chain and fails the handshake otherwise, so the connection is closed before
  any HTTP byte is read and the app never sees the request.

Hence: mTLS is served by hypercorn (see ``server.py``); plain TLS by either server.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import re
import ssl
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from xksproxy.fsutil import atomic_write

# OpenSSL names of the TLS 1.2 suites we allow: ECDHE (forward secrecy) + AEAD only. TLS 1.3
# suites are all forward-secret AEAD already; OpenSSL's default 1.3 list includes
# TLS_AES_256_GCM_SHA384 and TLS_CHACHA20_POLY1305_SHA256.
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
    ]
)

#: The subject common name AWS KMS presents, one per region.
KMS_CLIENT_SUBJECT = "cks.kms.{region}.amazonaws.com"

_SELF_SIGNED_DAYS = 825

log = logging.getLogger("xksproxy.tls")


def generate_self_signed(cert_path: Path | str, key_path: Path | str, hosts: Sequence[str]) -> None:
    """Write a self-signed server certificate and its key (PEM, PKCS#8, both files 0600).

    ECDSA P-256: the handshake is several times cheaper than RSA-2048, which matters for the
    "new connection + one Encrypt" latency. PKCS#8 because granian only reads that key format.
    ``hosts`` become SANs (IP addresses as iPAddress entries); the first one is the CN.
    """
    if not hosts:
        raise ValueError("generate_self_signed needs at least one host name")
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            sans.append(x509.DNSName(host))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(
        Path(key_path),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write_private(Path(cert_path), cert.public_bytes(serialization.Encoding.PEM))


def _write_private(path: Path, data: bytes) -> None:
    """Create or replace ``path`` with mode 0600 from the first byte (no world-readable window)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data, 0o600)


def allowed_subject_patterns(
    configured: Sequence[str], regions: Iterable[frozenset[str] | set[str] | Sequence[str]]
) -> tuple[str, ...]:
    """Client subject CN patterns for mTLS (shell-style globs).

    ``configured`` wins when not empty. Otherwise the KMS pattern for each region any key store
    accepts; a store that accepts any region (empty set) makes any region name match.
    """
    if configured:
        return tuple(configured)
    patterns: set[str] = set()
    for store_regions in regions:
        if not store_regions:
            return (KMS_CLIENT_SUBJECT.format(region="*"),)
        patterns.update(KMS_CLIENT_SUBJECT.format(region=r) for r in store_regions)
    return tuple(sorted(patterns)) or (KMS_CLIENT_SUBJECT.format(region="*"),)


def subject_allowed(common_names: Sequence[str], patterns: Sequence[str]) -> bool:
    """True when one of the certificate's subject CNs matches one pattern.

    ``*`` in a pattern matches within one DNS label only, so ``cks.kms.*.amazonaws.com`` cannot
    be satisfied by ``cks.kms.evil.example.amazonaws.com``.
    """
    compiled = [_pattern_regex(p) for p in patterns]
    return any(rx.fullmatch(cn) for cn in common_names for rx in compiled)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    return re.compile("[^.]*".join(re.escape(part) for part in pattern.split("*")))


def log_tls_refusal(reason: str) -> None:
    """One service-log line per refused client handshake (reason and CN only, no secrets).

    Goes through the ``xksproxy.runtime.tls`` logger, i.e. the worker's JSON service log on stdout.
    """
    log.warning(
        "client TLS handshake refused: %s",
        reason,
        extra={"fields": {"event": "tls_client_refused", "reason": reason}},
    )


class PinnedSSLObject(ssl.SSLObject):
    """``SSLObject`` that refuses the handshake unless the client CN matches the allowed patterns.

    asyncio and uvloop both create the server-side TLS object with ``context.wrap_bio``, which
    instantiates ``context.sslobject_class``; overriding :meth:`do_handshake` is therefore the one
    place where every handshake passes after OpenSSL verified chain and validity and before any
    application data is read. Failing here makes the event loop abort the connection.
    """

    allowed_patterns: tuple[str, ...] = ()

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            log_tls_refusal(_describe_ssl_error(exc))
            raise
        cert = self.getpeercert()
        if not cert:
            log_tls_refusal("no client certificate")
            raise ssl.SSLError("xksproxy: no client certificate")
        cns = _common_names(cert)
        if not subject_allowed(cns, self.allowed_patterns):
            log_tls_refusal(f"client certificate subject not allowed: CN={','.join(cns) or '-'}")
            raise ssl.SSLError("xksproxy: client certificate subject not allowed")


def _describe_ssl_error(exc: ssl.SSLError) -> str:
    """A short, secret-free reason for a failed handshake (OpenSSL's verify message when any)."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"client certificate rejected: {exc.verify_message}"
    if exc.reason in _NO_CERT_REASONS:
        return "no client certificate"
    return f"handshake failed: {exc.reason or exc.__class__.__name__}"


# OpenSSL reason codes for "the client sent no certificate" (1.2 and 1.3 spellings).
_NO_CERT_REASONS = frozenset(
    {"PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_REQUIRED", "NO_CERTIFICATE_RETURNED"}
)


def server_context(
    cert_file: Path,
    key_file: Path,
    *,
    client_ca_file: Path | None = None,
    allowed_subjects: Sequence[str] = (),
    alpn: Sequence[str] = ("h2", "http/1.1"),
) -> ssl.SSLContext:
    """The Python ``ssl`` server context (hypercorn): TLS 1.2/1.3, ECDHE+AEAD, optional mTLS."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    # No compression (CRIME), no renegotiation, fresh ECDHE key per handshake.
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_SINGLE_ECDH_USE
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(list(alpn))
    ctx.load_cert_chain(str(cert_file), str(key_file))
    if client_ca_file is not None:
        ctx.load_verify_locations(cafile=str(client_ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.sslobject_class = type(
            "PinnedSSLObjectBound",
            (PinnedSSLObject,),
            {"allowed_patterns": tuple(allowed_subjects)},
        )
    return ctx


def _common_names(cert: dict[str, Any]) -> list[str]:
    """The subject's CN values of a ``getpeercert()`` dict (a tuple of RDNs of (name, value)).

    typeshed types ``getpeercert()`` loosely (its values may be str), so the subject is read
    through this one typed helper instead of unpacking in a comprehension.
    """
    subject: tuple[tuple[tuple[str, str], ...], ...] = cert.get("subject", ())
    return [value for rdn in subject for (name, value) in rdn if name == "commonName"]
