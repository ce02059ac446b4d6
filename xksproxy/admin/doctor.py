"""``xksproxy doctor``: check a deployment end to end and say what to fix.

Why a separate tool: most outages of an external key store are configuration drift (a key
deleted from the HSM, a PIN changed, an expiring certificate, a secret file copied with the
wrong mode). KMS only reports "the external key store proxy did not respond correctly"; doctor
runs the same checks the proxy depends on and prints one table, OK / WARN / FAIL per check,
with the fix. Exit status 1 when anything FAILs, 0 otherwise (WARN does not fail).

It never prints a secret, a PIN or key material: only paths, names, labels and dates.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from xksproxy.keys.keystores import health_key_labels
from xksproxy.keys.resolver import KeyResolver
from xksproxy.xks.operations import METADATA

OK, WARN, FAIL = "OK", "WARN", "FAIL"
#: widest CHECK, STATUS and DETAIL cells before they wrap
COLUMN_CAPS = (34, 6, 60)
KMS_TIMEOUT_MS = 250
CERT_WARN_DAYS = 30


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


class Report:
    def __init__(self) -> None:
        self.checks: list[Check] = []

    def add(self, name: str, status: str, detail: str, fix: str = "") -> None:
        self.checks.append(Check(name, status, detail, fix))

    @property
    def failed(self) -> bool:
        return any(c.status == FAIL for c in self.checks)

    def render(self) -> str:
        """The table. A CHECK or DETAIL longer than its column wraps at spaces onto
        continuation lines, and FIX always starts in its own column: on the row's first line
        that leaves room for it. Nothing is cut (a path in DETAIL is what the operator needs,
        whole, to copy), so a single word longer than its column overflows it, and that row's
        FIX moves down a line instead of out of line."""
        rows = [("CHECK", "STATUS", "DETAIL", "FIX")]
        rows += [(c.name, c.status, c.detail, c.fix or "-") for c in self.checks]
        widths = [min(max(len(r[i]) for r in rows), cap) for i, cap in enumerate(COLUMN_CAPS)]
        fix_col = sum(widths) + 2 * len(widths)
        lines = []
        for r in rows:
            cols = [_wrap(r[i], widths[i]) for i in range(3)]
            fix: str | None = r[3]
            for n in range(max(len(c) for c in cols)):
                cells = [(c[n] if n < len(c) else "").ljust(widths[i]) for i, c in enumerate(cols)]
                prefix = "  ".join(cells).rstrip()
                if fix is not None and len(prefix) <= fix_col - 2:
                    prefix, fix = prefix.ljust(fix_col) + fix, None
                lines.append(prefix)
            if fix is not None:
                lines.append(" " * fix_col + fix)
        n_fail = sum(c.status == FAIL for c in self.checks)
        n_warn = sum(c.status == WARN for c in self.checks)
        lines.append("")
        lines.append(
            f"{len(self.checks)} checks: {n_fail} failed, {n_warn} warnings"
            + ("" if n_fail else " - ready to serve")
        )
        return "\n".join(lines)


def _wrap(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken at spaces only (a word
    longer than ``width`` keeps its own, longer line)."""
    return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False) or [""]


# -- individual checks -----------------------------------------------------------------------------
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def check_permissions(report: Report, config: Any) -> None:
    """Secret-bearing files must be private; the config must not be writable by others."""
    cfg_path = Path(config.path)
    m = _mode(cfg_path)
    if m & 0o022:
        report.add(
            "permissions: config file",
            FAIL,
            f"{cfg_path} is writable by group/others",
            f"chmod 600 {cfg_path}",
        )
    else:
        report.add("permissions: config file", OK, f"{cfg_path} mode {m:o}")
    private = []
    if not config.server.plain_http:
        private.append(("TLS private key", Path(config.tls.key_file)))
    for what, p in private:
        if not p.exists():
            continue
        m = _mode(p)
        if m & 0o077:
            report.add(
                f"permissions: {what}", FAIL, f"{p} is readable by group/others", f"chmod 600 {p}"
            )
        else:
            report.add(f"permissions: {what}", OK, f"{p} mode {m:o}")
    report.add(
        "permissions: secret files",
        OK,
        "every file: secret is private (checked by the config loader)",
    )


def check_deadline(report: Report, config: Any) -> None:
    ms = config.server.request_deadline_ms
    if ms >= KMS_TIMEOUT_MS:
        report.add(
            "latency budget",
            FAIL,
            f"request_deadline_ms = {ms} >= KMS timeout 250 ms",
            "set [server] request_deadline_ms well below 250 (default 150)",
        )
    elif ms > 200:
        report.add(
            "latency budget",
            WARN,
            f"request_deadline_ms = {ms}: little room for the network before KMS's 250 ms",
            "lower [server] request_deadline_ms",
        )
    else:
        report.add("latency budget", OK, f"request_deadline_ms = {ms}")


def check_certificate(report: Report, config: Any, now: datetime | None = None) -> None:
    if config.server.plain_http:
        report.add(
            "TLS certificate",
            WARN,
            "plain_http = true: no TLS on this listener",
            "only behind a load balancer terminating TLS inside your trust boundary",
        )
        return
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = Path(config.tls.cert_file), Path(config.tls.key_file)
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        report.add(
            "TLS certificate",
            FAIL,
            f"{cert_path}: cannot load ({type(exc).__name__})",
            "point [tls] cert_file at a PEM certificate chain",
        )
        return
    now = now or datetime.now(UTC)
    not_after = cert.not_valid_after_utc
    not_before = cert.not_valid_before_utc
    subject = cert.subject.rfc4514_string()
    if now < not_before:
        report.add(
            "TLS certificate",
            FAIL,
            f"{subject} not valid before {not_before:%Y-%m-%d}",
            "check the clock or the certificate",
        )
    elif now >= not_after:
        report.add(
            "TLS certificate",
            FAIL,
            f"{subject} expired {not_after:%Y-%m-%d}",
            "renew the certificate ([tls] cert_file/key_file)",
        )
    elif not_after - now < timedelta(days=CERT_WARN_DAYS):
        days = (not_after - now).days
        report.add(
            "TLS certificate",
            WARN,
            f"{subject} expires in {days} days ({not_after:%Y-%m-%d})",
            "renew the certificate soon",
        )
    else:
        report.add(
            "TLS certificate",
            OK,
            f"{subject} valid until {not_after:%Y-%m-%d} ({(not_after - now).days} days)",
        )
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        report.add(
            "TLS private key",
            FAIL,
            f"{key_path}: cannot load ({type(exc).__name__})",
            "point [tls] key_file at the unencrypted PEM key of the certificate",
        )
        return
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if key.public_key().public_bytes(enc, fmt) != cert.public_key().public_bytes(enc, fmt):
        report.add(
            "TLS private key",
            FAIL,
            "the key does not match the certificate",
            "use the key the certificate was issued for",
        )
    else:
        report.add("TLS private key", OK, "matches the certificate")


def check_audit(report: Report, config: Any) -> None:
    a = config.audit
    if a.file is None:
        report.add(
            "audit log",
            WARN,
            "disabled ([audit] file is empty)",
            "set [audit] file to keep a tamper-evident record of every request",
        )
        return
    directory = Path(a.file).parent
    if directory.exists() and not os.access(directory, os.W_OK):
        report.add("audit log", FAIL, f"{directory} is not writable", "fix the directory owner")
        return
    if not Path(a.file).exists():
        report.add("audit log", OK, f"{a.file} will be created")
        return
    from xksproxy.observe.audit import log_files, verify_files

    files = log_files(Path(a.file))
    size = sum(f.stat().st_size for f in files)
    if size > 256 * 1024 * 1024:
        report.add("audit log", OK, f"{a.file} ({size} bytes; too large to verify here)")
        return
    # Files shipped off the host may be gone: doctor checks what is here (audit verify is strict)
    res = verify_files(files, a.key, allow_partial=True)
    if res.ok:
        report.add("audit log", OK, f"{a.file}: chain intact, {res.records} records")
    else:
        report.add(
            "audit log",
            FAIL,
            res.message,
            "investigate: the audit log was modified (keep a copy before rotating)",
        )


def check_hsms(report: Report, config: Any) -> None:
    """Module load, login, health-key round trip and every configured key's usage."""
    asyncio.run(_check_hsms(report, config))


async def _check_hsms(report: Report, config: Any) -> None:
    from hsm import HsmPool
    from hsm.errors import HsmError

    for hcfg in config.hsms:
        name = f"hsm {hcfg.name}"
        if not Path(hcfg.module).exists():
            report.add(
                f"{name}: module",
                FAIL,
                f"{hcfg.module} does not exist",
                "install the vendor's PKCS#11 library or fix [[hsm]] module",
            )
            continue
        pool = HsmPool(hcfg)
        try:
            await pool.start()
        except Exception as exc:
            detail = (
                _safe(exc) if isinstance(exc, HsmError) else (f"{type(exc).__name__}: {_safe(exc)}")
            )
            report.add(
                f"{name}: module + login",
                FAIL,
                detail,
                "check [[hsm]] module, token_label and the PIN file",
            )
            continue
        try:
            report.add(
                f"{name}: module + login",
                OK,
                f"token {hcfg.token_label!r} logged in, {hcfg.sessions} sessions",
            )
            probe = await pool.probe()
            if probe.ok:
                ms = probe.latency_s * 1000
                status = OK if ms <= config.health.degraded_ms else WARN
                report.add(
                    f"{name}: test-key round trip",
                    status,
                    f"{hcfg.health_key_label!r} encrypt+decrypt in {ms:.1f} ms",
                    "" if status == OK else "the HSM is slow: GetHealthStatus will report DEGRADED",
                )
            else:
                report.add(
                    f"{name}: test-key round trip",
                    FAIL,
                    probe.error or "failed",
                    f"create the health key: xksproxy keys create "
                    f"{hcfg.health_key_label} --hsm {hcfg.name}",
                )
            health = health_key_labels(config)
            for store in config.keystores:
                resolver = KeyResolver(store, health)
                if resolver.backend == config.backend_of(hcfg.name):  # each member's keys
                    await _check_store_keys(report, pool, store, resolver)
        finally:
            await pool.close()


async def _check_store_keys(report: Report, pool: Any, store: Any, resolver: KeyResolver) -> None:
    """Each key a store lists: present on the token, and what it may do (KMS needs both)."""
    from hsm.errors import HsmError, KeyNotFound

    for key_id in sorted(store.keys):
        if key_id == "*":
            report.add(f"key {store.name}/*", OK, "every key on the token except the health key")
            continue
        key = resolver.resolve(key_id, METADATA)
        label = key.label
        check = f"key {store.name}/{key_id}"
        try:
            info = await pool.key_info(label, deadline=time.monotonic() + 5.0)
        except KeyNotFound:
            report.add(
                check,
                FAIL,
                f"no AES key labelled {label!r} on the token",
                f"xksproxy keys create {label} or remove it from keystore {store.name!r} keys",
            )
            continue
        except HsmError as exc:
            report.add(check, FAIL, _safe(exc), "check the HSM")
            continue
        usage = {u for u in info.usage if u in ("ENCRYPT", "DECRYPT")}
        state = "" if key.enabled else f"{key.status} "
        if usage == {"ENCRYPT", "DECRYPT"}:
            report.add(check, OK, f"{state}AES key {label!r}: ENCRYPT, DECRYPT")
        elif _restricted_demo_key(store.name, key_id, usage):
            what = ", ".join(sorted(usage)) or "no usage"
            report.add(check, OK, f"{state}AES key {label!r}: {what} (demo key, as intended)")
        elif usage:
            report.add(
                check,
                WARN,
                f"{state}AES key {label!r}: only {', '.join(sorted(usage))}",
                "fine if intended; KMS needs both to use the key fully",
            )
        else:
            report.add(
                check,
                WARN,
                f"{state}AES key {label!r}: may neither encrypt nor decrypt",
                "recreate it with encrypt-decrypt usage if KMS should use it",
            )


def _restricted_demo_key(store: str, key_id: str, usage: set[str]) -> bool:
    """One of `init`'s demo keys, restricted on purpose (to try KMS's usage errors), and still
    exactly as `init` made it: expected, not a warning."""
    from xksproxy.admin.embedded import DEMO_KEYS, DEMO_KEYSTORE

    expected = DEMO_KEYS.get(key_id)
    return store == DEMO_KEYSTORE and expected is not None and usage == set(expected)


def check_shared_tokens(report: Report, config: Any) -> None:
    """``keys = ["*"]`` lets a store use every key on its token: with another store on the same
    token, that includes the other store's keys (one tenant could decrypt another's data)."""
    by_token: dict[tuple[str, str], list[Any]] = {}
    hsms = {h.name: h for h in config.hsms}
    for store in config.keystores:
        h = hsms.get(store.hsm)
        token = (h.module, h.token_label) if h is not None else (store.hsm, "")
        by_token.setdefault(token, []).append(store)
    for (_module, label), stores in sorted(by_token.items()):
        wild = [s.name for s in stores if "*" in s.keys]
        if len(stores) < 2 or not wild:
            continue
        others = ", ".join(s.name for s in stores if s.name not in wild) or "each other"
        report.add(
            "key isolation",
            WARN,
            f'keystore {", ".join(wild)} uses keys = ["*"] on token {label!r}, shared with '
            f"keystore {others}: it can use their keys too",
            "list the store's keys explicitly, or give each store its own token",
        )


def _safe(exc: BaseException) -> str:
    """Exception text cut short; hsm/config errors never carry PINs or secrets."""
    text = str(exc) or type(exc).__name__
    return text[:200]


def run_checks(config_path: Path, *, hsm: bool = True) -> Report:
    from xksproxy.admin.policy_check import check_policies
    from xksproxy.config import ConfigError, load_config

    report = Report()
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        report.add("configuration", FAIL, exc.message, f"edit {config_path}")
        return report
    report.add(
        "configuration",
        OK,
        f"{config_path}: {len(config.keystores)} key store(s), {len(config.hsms)} HSM(s)",
    )
    from xksproxy.admin import audit_doctor

    steps: list[Callable[[Report, Any], None]] = [
        check_permissions,
        check_deadline,
        check_certificate,
        check_audit,
        check_policies,
        audit_doctor.check_audit_integrity,
        audit_doctor.check_audit_disk,
        check_shared_tokens,
    ]
    if hsm:
        steps.append(audit_doctor.check_audit_anchor)
        from xksproxy.admin.member_drift import check_member_drift  # issue 13

        steps += [check_hsms, check_member_drift]
    for step in steps:
        try:
            step(report, config)
        except Exception as exc:  # a broken check must not hide the others
            report.add(
                step.__name__.replace("check_", ""),
                FAIL,
                f"check crashed: {type(exc).__name__}: {_safe(exc)}",
            )
    for store in config.keystores:
        report.add(
            f"keystore {store.name}",
            OK if store.enabled else WARN,
            f"{store.uri_path}: {len(store.credentials)} credential(s)"
            + ("" if store.enabled else ", DISABLED"),
            "" if store.enabled else "set enabled = true to serve it",
        )
    return report


def main(config_path: Path | str) -> int:
    """``xksproxy doctor``: print the table; exit 1 if any check failed."""
    report = run_checks(Path(config_path))
    print(report.render())
    sys.stdout.flush()
    return 1 if report.failed else 0
