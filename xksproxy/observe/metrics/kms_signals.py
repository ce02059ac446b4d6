"""Gauges KMS operators already watch in CloudWatch: certificate expiry, credential age, readiness.

Why computed at scrape time in each worker: they change slowly (a renewed certificate, a rotated
credential) and must follow the files without a restart; each is cached by the file's stat
signature so a scrape costs a few ``stat()`` calls.

Credential age: a credential's creation time is its secret file's modification time
(``xksproxy init`` / ``credentials add`` write a new file per credential; an edit rewrites it).
That needs no new config field, so every existing config keeps working. A credential whose
secret is an ``env:`` reference has no file and is left out (a store with only such credentials
has no age series). Restoring secret files from a backup resets their mtime: restore with
``cp -p``/``tar -p``.
"""

from __future__ import annotations

import datetime
import os
import time
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from xksproxy.config import secret_file
from xksproxy.observe.metrics.registry import Sample

_Sig = tuple[int, int, int]


def _sig(path: Path) -> _Sig | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ino, st.st_size)


class CertificateExpiry:
    """Seconds until ``cert_file``'s first (leaf) certificate expires; cached by stat."""

    def __init__(self, cert_file: Path) -> None:
        self.cert_file = cert_file
        self._sig: _Sig | None = None
        self._not_after: float | None = None

    def not_after(self) -> float | None:
        sig = _sig(self.cert_file)
        if sig is None:
            return None
        if sig != self._sig:
            from cryptography import x509

            try:
                cert = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
                end: datetime.datetime = cert.not_valid_after_utc
                self._not_after = end.timestamp()
            except (OSError, ValueError):
                self._not_after = None
            self._sig = sig
        return self._not_after

    def seconds_left(self, now: float | None = None) -> float | None:
        end = self.not_after()
        return None if end is None else end - (time.time() if now is None else now)


def credential_files(config_path: Path) -> dict[str, list[Path]]:
    """Key store name -> the secret files of its credentials, from the config file as written."""
    raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
    out: dict[str, list[Path]] = {}
    for store in raw.get("keystore", []):
        files = []
        for cred in store.get("credentials", []):
            ref = cred.get("secret")
            path = secret_file(ref, config_path.parent) if isinstance(ref, str) else None
            if path is not None:
                files.append(path)
        out[str(store.get("name", ""))] = files
    return out


class CredentialAge:
    """Age in seconds of each key store's newest credential (newest secret file mtime)."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self._sig: _Sig | None = None
        self._files: dict[str, list[Path]] = {}

    def ages(self, now: float | None = None) -> dict[str, float]:
        sig = _sig(self.config_path)
        if sig != self._sig:  # the config was edited (credentials added or removed)
            try:
                self._files = credential_files(self.config_path)
            except (OSError, ValueError):
                self._files = {}
            self._sig = sig
        now = time.time() if now is None else now
        out = {}
        for store, files in self._files.items():
            mtimes = []
            for path in files:
                try:
                    mtimes.append(os.stat(path).st_mtime)
                except OSError:
                    continue
            if mtimes:
                out[store] = max(0.0, now - max(mtimes))
        return out


def collector(app: Any) -> Iterable[Sample]:
    """The samples for one worker's ``app`` (``xksproxy.service.app.XksApp``, typed loosely:
    observe/ sits below service/)."""
    config = app.config
    cert = _cert_cache(config.tls.cert_file)
    left = cert.seconds_left() if not config.server.plain_http else None
    if left is not None:
        yield "xksproxy_tls_certificate_expiry_seconds", {}, left
    path = getattr(config, "path", None)
    if path is not None:
        for store, age in _age_cache(Path(path)).ages().items():
            yield "xksproxy_credential_age_seconds", {"keystore": store}, age
    drain = getattr(app, "drain", None)
    draining = bool(getattr(drain, "draining", False))
    yield "xksproxy_draining", {}, float(draining)
    try:
        ready = app.not_ready_reason() is None
    except Exception:
        ready = False
    yield "xksproxy_ready", {}, float(ready)


_CERTS: dict[Path, CertificateExpiry] = {}
_AGES: dict[Path, CredentialAge] = {}


def _cert_cache(path: Path) -> CertificateExpiry:
    return _CERTS.setdefault(path, CertificateExpiry(path))


def _age_cache(path: Path) -> CredentialAge:
    return _AGES.setdefault(path, CredentialAge(path))
