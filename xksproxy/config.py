"""Load and validate ``xksproxy.toml`` (``conf/xksproxy.toml`` is the reference and the contract).

Everything is checked at start so a bad deployment fails with one precise message instead of a
wrong answer to KMS later.  Every :class:`ConfigError` message starts with the option path, e.g.
``keystore[0].credentials[1].secret: ...``.  Unknown options are refused (they are usually typos).

Paths are resolved against the directory of the config file.  Secrets are references only:
``file:PATH`` (the file must not be readable by group or others) or ``env:NAME``; a literal
secret is refused so it never ends up in version control.  ``[hsm.env]`` values that name an
existing file relative to the config directory are made absolute (e.g. ``SOFTHSM2_CONF``).

Environment overrides, applied after the file and validated the same way (names and docs in
:mod:`xksproxy.environment`): ``BIND`` (server.bind), ``WORKERS`` (server.workers),
``PLAIN_HTTP`` (server.plain_http: 1/true/yes/on or 0/false/no/off), ``SERVER`` (server.server).
"""

from __future__ import annotations

import logging
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsm.types import HsmConfig
from sigv4 import Credential, validate_access_key_id, validate_secret
from xksproxy import authz, environment
from xksproxy.bind import parse_bind
from xksproxy.xks.uri import API_ROOT, MAX_BASE_PATH_CHARS, base_path


class ConfigError(Exception):
    """Invalid configuration; the message names the option and never contains a secret."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ServerConfig:
    bind: str = "127.0.0.1:8443"
    server: str = "granian"
    workers: int = 0
    plain_http: bool = False
    max_body_bytes: int = 262144
    request_deadline_ms: int = 150
    max_in_flight: int = 256
    # Budget for work done before SigV4 succeeds (body read + verify), per worker process:
    # separate from max_in_flight so unauthenticated callers cannot take KMS's slots.
    max_unauthenticated: int = 128
    max_unauthenticated_per_client: int = 32
    drain_grace_s: float = 10.0


@dataclass(frozen=True)
class TlsConfig:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    allowed_client_subjects: tuple[str, ...] = ()


@dataclass(frozen=True)
class MetricsConfig:
    bind: str | None = "127.0.0.1:9464"


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    request_log: bool = True


@dataclass(frozen=True)
class AuditConfig:
    file: Path | None
    key: bytes | None = field(default=None, repr=False)
    rotate_bytes: int = 67108864
    # Audit-trail hardening (issue 17): refuse Encrypt/Decrypt while a gap is unacknowledged;
    # keep at most this many rotated files (0 = all).
    refuse_on_gap: bool = True
    keep_files: int = 16
    # HSM anchor: the [[hsm]] holding the anchor key and checkpoints (None = no anchor), the
    # key's label, and seconds between checkpoints (0 = only `xksproxy audit checkpoint`).
    anchor_hsm: str | None = None
    anchor_key_label: str = "xksproxy-audit-anchor"
    checkpoint_interval_s: float = 60.0


@dataclass(frozen=True)
class HealthConfig:
    interval_s: float = 10.0
    degraded_ms: float = 100.0
    xks_proxy_vendor: str = "xksproxy"
    xks_proxy_model: str = "xksproxy 0.1"
    ekm_vendor: str = "SoftHSMv2"
    fleet_size: int = 1


DENY_FIELDS = frozenset(
    {"principal", "operation", "key_arn", "via_service", "source_vpc", "source_vpce", "key_id"}
)


@dataclass(frozen=True)
class CustodyConfig:
    """[custody]: how long a worker may cache a key's lifecycle state read from the HSM."""

    state_cache_s: float = 5.0


@dataclass(frozen=True)
class DenyRule:
    name: str
    fields: dict[str, str]


@dataclass(frozen=True)
class KeystoreConfig:
    name: str
    path_prefix: str
    hsm: str
    regions: frozenset[str]
    keys: frozenset[str]
    key_labels: dict[str, str]
    quota_rate: float
    quota_burst: int
    disabled_keys: frozenset[str]
    enabled: bool
    deny: list[DenyRule]
    credentials: list[Credential]
    policy: authz.CompiledPolicy | None = None
    """The store's Cedar policy (``policy`` file + translated ``deny`` rules); None: no policy."""

    @property
    def uri_path(self) -> str:
        """The XksProxyUriPath KMS is configured with."""
        return base_path(self.path_prefix)


@dataclass(frozen=True)
class Config:
    path: Path
    server: ServerConfig
    tls: TlsConfig
    metrics: MetricsConfig
    logging: LoggingConfig
    audit: AuditConfig
    health: HealthConfig
    hsms: list[HsmConfig]
    keystores: list[KeystoreConfig]
    # [[hsm]].model per token name (reported in ekmFleetDetails); not part of hsm.HsmConfig.
    hsm_models: dict[str, str] = field(default_factory=dict)
    custody: CustodyConfig = field(default_factory=CustodyConfig)
    # Backend name -> its members' [[hsm]] names, in file order (see _backends).
    backends: dict[str, list[str]] = field(default_factory=dict)
    # [[hsm]].so_pin secret references by member name, resolved only by the replication
    # ceremony (never by serve): the Security Officer PIN marks a transport key trusted.
    so_pin_refs: dict[str, str] = field(default_factory=dict)
    # [control] dir: the running proxy's maintenance channel (xksproxy/runtime/control.py);
    # None = "control" next to the config file.
    control_dir: Path | None = None

    def members(self, backend: str) -> list[HsmConfig]:
        """The [[hsm]] members of ``backend`` (a one-member backend is named after its member)."""
        names = self.backends.get(backend, [backend])
        return [h for h in self.hsms if h.name in names]

    def backend_of(self, member: str) -> str:
        for backend, names in self.backends.items():
            if member in names:
                return backend
        return member


# --------------------------------------------------------------------------- helpers

_KEY_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_PREFIX_RE = re.compile(r"(/[A-Za-z0-9_-]+)*")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def valid_key_id(key_id: str) -> bool:
    """External key id charset/length from the spec: 1..128 of ``A-Za-z0-9 . - _``."""
    return _KEY_ID_RE.fullmatch(key_id) is not None


class _Section:
    """A TOML table plus its option path, with typed getters that raise precise errors."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: must be a table")
        self.data: dict[str, Any] = data
        self.where = where
        self.used: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, default: Any, kind: type | tuple[type, ...]) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if kind in (int, float, (int, float)) and isinstance(value, bool):
            raise ConfigError(f"{self.name(key)}: must be a number")
        if not isinstance(value, kind):
            kind_name = kind.__name__ if isinstance(kind, type) else "number"
            kind_name = {
                "str": "a string",
                "bool": "true or false",
                "int": "an integer",
                "list": "a list",
                "dict": "a table",
            }.get(kind_name, kind_name)
            raise ConfigError(f"{self.name(key)}: must be {kind_name}")
        return value

    def sub(self, key: str) -> _Section:
        return _Section(self.get(key, {}, dict), self.name(key))

    def strings(self, key: str, default: list[str]) -> list[str]:
        value = self.get(key, default, list)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(f"{self.name(key)}[{i}]: must be a string")
        return list(value)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(f"{self.name(unknown[0])}: unknown option")


def _path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def secret_file(ref: str, base: Path) -> Path | None:
    """The file a ``file:PATH`` secret reference names (relative to ``base``), else None."""
    return _path(base, ref[5:]) if ref.startswith("file:") else None


def resolve_secret(ref: str, where: str, base: Path) -> str:
    """Resolve a ``file:PATH`` / ``env:NAME`` secret reference; literal secrets are refused."""
    path = secret_file(ref, base)
    if path is not None:
        try:
            st = path.stat()
        except OSError:
            raise ConfigError(f"{where}: file {path} does not exist or is not readable") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{where}: file {path} is readable by group/others (chmod 600 {path})"
            )
        try:
            return path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            raise ConfigError(f"{where}: file {path} cannot be read as UTF-8 text") from None
    if ref.startswith("env:"):
        name = ref[4:]
        if not name:
            raise ConfigError(f"{where}: env: reference names no variable")
        value = os.environ.get(name)
        if value is None:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return value.strip()
    raise ConfigError(f'{where}: literal secrets are refused; use "file:PATH" or "env:NAME"')


def _bind(value: str, where: str) -> str:
    try:
        parse_bind(value, allow_port_zero=False)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return value


def _positive_int(s: _Section, key: str, default: int, *, minimum: int = 1) -> int:
    value = s.get(key, default, int)
    if value < minimum:
        raise ConfigError(f"{s.name(key)}: must be at least {minimum}")
    return value


# --------------------------------------------------------------------------- sections


def _server(s: _Section) -> ServerConfig:
    cfg = ServerConfig(
        bind=_bind(s.get("bind", "127.0.0.1:8443", str), s.name("bind")),
        server=s.get("server", "granian", str),
        workers=_positive_int(s, "workers", 0, minimum=0),
        plain_http=s.get("plain_http", False, bool),
        max_body_bytes=_positive_int(s, "max_body_bytes", 262144, minimum=16384),
        request_deadline_ms=_positive_int(s, "request_deadline_ms", 150),
        max_in_flight=_positive_int(s, "max_in_flight", 256),
        max_unauthenticated=_positive_int(s, "max_unauthenticated", 128),
        max_unauthenticated_per_client=_positive_int(s, "max_unauthenticated_per_client", 32),
        drain_grace_s=_drain_grace(s),
    )
    if cfg.server not in ("granian", "hypercorn"):
        raise ConfigError(f'{s.name("server")}: must be "granian" or "hypercorn"')
    if cfg.request_deadline_ms > 60000:
        raise ConfigError(f"{s.name('request_deadline_ms')}: must be at most 60000")
    s.finish()
    return cfg


def _drain_grace(s: _Section) -> float:
    """``[server] drain_grace_s``: how long a SIGTERMed proxy keeps serving with /ready at 503,
    so load balancers take it out of rotation before it exits (0 = stop at once)."""
    value = float(s.get("drain_grace_s", 10.0, (int, float)))
    if not 0.0 <= value <= 300.0:
        raise ConfigError(f"{s.name('drain_grace_s')}: must be between 0 and 300 seconds")
    return value


def _env_overrides(cfg: ServerConfig, env: Mapping[str, str]) -> ServerConfig:
    changes: dict[str, Any] = {}
    bind = environment.BIND.get(env=env)
    if bind is not None:
        changes["bind"] = _bind(bind, environment.BIND.name)
    workers = environment.WORKERS.get(env=env)
    if workers is not None:
        if not workers.strip().isdigit():
            raise ConfigError(f"{environment.WORKERS.name}: must be a non-negative integer")
        changes["workers"] = int(workers.strip())
    plain = environment.PLAIN_HTTP.get(env=env)
    if plain is not None:
        flag = plain.strip().lower()
        if flag not in _TRUE | _FALSE:
            raise ConfigError(
                f"{environment.PLAIN_HTTP.name}: must be true/false (1/0, yes/no, on/off)"
            )
        changes["plain_http"] = flag in _TRUE
    server = environment.SERVER.get(env=env)
    if server is not None:
        if server not in ("granian", "hypercorn"):
            raise ConfigError(f'{environment.SERVER.name}: must be "granian" or "hypercorn"')
        changes["server"] = server
    grace = environment.DRAIN_GRACE_S.get(env=env)
    if grace is not None:
        try:
            changes["drain_grace_s"] = float(grace)
        except ValueError:
            changes["drain_grace_s"] = -1.0
        if not 0.0 <= changes["drain_grace_s"] <= 300.0:
            raise ConfigError(f"{environment.DRAIN_GRACE_S.name}: must be 0 to 300 seconds")
    if not changes:
        return cfg
    return ServerConfig(**{**cfg.__dict__, **changes})


def _tls(s: _Section, base: Path) -> TlsConfig:
    ca = s.get("client_ca_file", "", str)
    cfg = TlsConfig(
        cert_file=_path(base, s.get("cert_file", "tls/server.crt", str)),
        key_file=_path(base, s.get("key_file", "tls/server.key", str)),
        client_ca_file=_path(base, ca) if ca else None,
        allowed_client_subjects=tuple(s.strings("allowed_client_subjects", [])),
    )
    s.finish()
    return cfg


def _metrics(s: _Section, env: Mapping[str, str]) -> MetricsConfig:
    bind = s.get("bind", "127.0.0.1:9464", str)
    s.finish()
    override = environment.METRICS_BIND.get(env=env)
    if override is not None:  # several proxies on one host share a file, not a metrics port
        bind = override.strip()
        return MetricsConfig(bind=_bind(bind, environment.METRICS_BIND.name) if bind else None)
    return MetricsConfig(bind=_bind(bind, s.name("bind")) if bind else None)


def _logging(s: _Section) -> LoggingConfig:
    level = s.get("level", "info", str)
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"{s.name('level')}: must be debug, info, warning or error")
    cfg = LoggingConfig(level=level, request_log=s.get("request_log", True, bool))
    s.finish()
    return cfg


def _audit(s: _Section, base: Path) -> AuditConfig:
    file = s.get("file", "audit/xksproxy-audit.log", str)
    key_ref = s.get("key", "file:secrets/audit.key", str)
    rotate = _positive_int(s, "rotate_bytes", 67108864, minimum=0)
    hardening = _audit_hardening(s)
    s.finish()
    if not file:
        return AuditConfig(file=None, key=None, rotate_bytes=rotate, **hardening)
    key = resolve_secret(key_ref, s.name("key"), base).encode("utf-8")
    if len(key) < 32:
        raise ConfigError(f"{s.name('key')}: needs at least 32 bytes of key material")
    return AuditConfig(file=_path(base, file), key=key, rotate_bytes=rotate, **hardening)


def _audit_hardening(s: _Section) -> dict[str, Any]:
    """``[audit] refuse_on_gap`` (default true) and ``keep_files`` (default 16, 0 = keep all)."""
    interval = s.get("checkpoint_interval_s", 60, (int, float))
    if isinstance(interval, bool) or not 0 <= interval <= 86400:
        raise ConfigError(f"{s.name('checkpoint_interval_s')}: must be 0-86400 seconds")
    label = s.get("anchor_key_label", "xksproxy-audit-anchor", str)
    if not 0 < len(label.encode()) <= 64:
        raise ConfigError(f"{s.name('anchor_key_label')}: must be 1-64 bytes")
    return {
        "refuse_on_gap": s.get("refuse_on_gap", True, bool),
        "keep_files": _positive_int(s, "keep_files", 16, minimum=0),
        "anchor_hsm": s.get("anchor_hsm", "", str) or None,
        "anchor_key_label": label,
        "checkpoint_interval_s": float(interval),
    }


def _check_audit_anchor(audit: AuditConfig, hsms: dict[str, HsmConfig]) -> None:
    if audit.anchor_hsm is not None and audit.anchor_hsm not in hsms:
        raise ConfigError(
            f"audit.anchor_hsm: no [[hsm]] named {audit.anchor_hsm!r} "
            f"(known: {', '.join(sorted(hsms))})"
        )


def _printable(s: _Section, key: str, default: str) -> str:
    value = s.get(key, default, str)
    if not value or len(value) > 200 or any(not " " <= ch <= "~" for ch in value):
        raise ConfigError(f"{s.name(key)}: must be 1-200 printable ASCII characters")
    return value


def _health(s: _Section) -> HealthConfig:
    interval = s.get("interval_s", 10, (int, float))
    if not 0 < interval <= 30:
        raise ConfigError(
            f"{s.name('interval_s')}: must be more than 0 and at most 30 "
            "(the cached answer must stay under 60 s old)"
        )
    degraded = s.get("degraded_ms", 100, (int, float))
    if degraded <= 0:
        raise ConfigError(f"{s.name('degraded_ms')}: must be more than 0")
    cfg = HealthConfig(
        interval_s=float(interval),
        degraded_ms=float(degraded),
        xks_proxy_vendor=_printable(s, "xks_proxy_vendor", "xksproxy"),
        xks_proxy_model=_printable(s, "xks_proxy_model", "xksproxy 0.1"),
        ekm_vendor=_printable(s, "ekm_vendor", "SoftHSMv2"),
        fleet_size=_positive_int(s, "fleet_size", 1),
    )
    s.finish()
    return cfg


def _custody(s: _Section) -> CustodyConfig:
    ttl = s.get("state_cache_s", 5.0, (int, float))
    if not 0 <= ttl <= 5:
        raise ConfigError(
            f"{s.name('state_cache_s')}: must be 0..5 (a key state change made with "
            "`xksproxy keys` must be in force within 5 s)"
        )
    s.finish()
    return CustodyConfig(state_cache_s=float(ttl))


def _hsm(s: _Section, base: Path) -> tuple[HsmConfig, str]:
    name = s.get("name", None, str)
    if not name:
        raise ConfigError(f"{s.name('name')}: is required")
    model = _printable(s, "model", "SoftHSMv2")
    module = s.get("module", "/usr/lib/softhsm/libsofthsm2.so", str)
    token_label = s.get("token_label", "xksproxy", str)
    if not token_label:
        raise ConfigError(f"{s.name('token_label')}: must not be empty")
    pin = resolve_secret(s.get("pin", "file:secrets/user.pin", str), s.name("pin"), base)
    mode = s.get("mode", "inline", str)
    if mode not in ("inline", "threaded"):
        raise ConfigError(f'{s.name("mode")}: must be "inline" or "threaded"')
    iv_source = s.get("iv_source", "rng", str)
    if iv_source not in ("rng", "module"):
        raise ConfigError(f'{s.name("iv_source")}: must be "rng" or "module"')
    health_key = s.get("health_key_label", "xks-health-test", str)
    if not health_key:
        raise ConfigError(f"{s.name('health_key_label')}: must not be empty")
    max_pt = _positive_int(s, "max_plaintext_bytes", 65536, minimum=4300)
    env_section = s.sub("env")
    env: dict[str, str] = {}
    for key in list(env_section.data):
        value = env_section.get(key, "", str)
        candidate = base / value
        if value and not Path(value).is_absolute() and candidate.exists():
            value = str(candidate.resolve())
        env[key] = value
    env_section.finish()
    cfg = HsmConfig(
        name=name,
        module=str(_path(base, module)),
        token_label=token_label,
        pin=pin,
        sessions=_positive_int(s, "sessions", 4),
        mode=mode,
        iv_source=iv_source,
        health_key_label=health_key,
        max_plaintext_bytes=max_pt,
        env=env,
    )
    s.finish()
    return cfg, model


def _deny(s: _Section) -> DenyRule:
    name = s.get("name", None, str)
    if not name:
        raise ConfigError(f"{s.name('name')}: is required")
    fields: dict[str, str] = {}
    for key in list(s.data):
        if key == "name":
            continue
        if key not in DENY_FIELDS:
            raise ConfigError(
                f"{s.name(key)}: unknown deny field (use {', '.join(sorted(DENY_FIELDS))})"
            )
        fields[key] = s.get(key, "", str)
    if not fields:
        raise ConfigError(f"{s.where}: a deny rule needs at least one field")
    s.finish()
    return DenyRule(name=name, fields=fields)


def _policy(
    s: _Section, base: Path, store: str, deny: list[DenyRule]
) -> authz.CompiledPolicy | None:
    """``[keystore] policy`` (a Cedar file, relative to the config) plus the translated deny
    rules, compiled and validated against the schema now (see :mod:`xksproxy.authz`)."""
    ref = s.get("policy", None, str)
    if ref is None and not deny:
        return None
    if ref == "":
        raise ConfigError(f"{s.name('policy')}: must name a Cedar policy file")
    if deny:
        logging.getLogger("xksproxy.config").warning(
            f"{s.name('deny')}: [[keystore.deny]] is deprecated and was translated to Cedar "
            f'forbid policies; replace it with a Cedar policy file (policy = "policies/{store}'
            '.cedar"; example: conf/policies/demo.cedar)'
        )
    try:
        return authz.compile_policy(
            _path(base, ref) if ref else None, [(r.name, r.fields) for r in deny]
        )
    except authz.PolicyError as exc:
        raise ConfigError(f"{s.name(exc.option)}: {exc.message}") from None


def _credential(s: _Section, base: Path) -> Credential:
    akid = s.get("access_key_id", None, str)
    if akid is None:
        raise ConfigError(f"{s.name('access_key_id')}: is required")
    try:
        validate_access_key_id(akid)
    except ValueError as exc:
        raise ConfigError(f"{s.name('access_key_id')}: {exc}") from None
    ref = s.get("secret", None, str)
    if ref is None:
        raise ConfigError(f"{s.name('secret')}: is required")
    secret = resolve_secret(ref, s.name("secret"), base)
    try:
        validate_secret(secret)
    except ValueError:
        raise ConfigError(
            f"{s.name('secret')}: the secret must be 43-64 characters a-zA-Z0-9+/="
        ) from None
    s.finish()
    return Credential(access_key_id=akid, secret=secret)


def _keystore(s: _Section, base: Path, hsms: dict[str, HsmConfig]) -> KeystoreConfig:
    name = s.get("name", None, str)
    if not name or not valid_key_id(name):
        raise ConfigError(f"{s.name('name')}: is required (1-128 of A-Za-z0-9._-)")
    prefix = s.get("path_prefix", "", str)
    if not _PREFIX_RE.fullmatch(prefix):
        raise ConfigError(
            f"{s.name('path_prefix')}: must be empty or /segment[/segment...] of a-zA-Z0-9-_ "
            "(leading /, no trailing /)"
        )
    if len(base_path(prefix)) > MAX_BASE_PATH_CHARS:
        raise ConfigError(
            f'{s.name("path_prefix")}: "<prefix>{API_ROOT}" exceeds {MAX_BASE_PATH_CHARS} chars'
        )
    hsm_name = s.get("hsm", None, str)
    if hsm_name is None:
        if len(hsms) != 1:
            raise ConfigError(f"{s.name('hsm')}: is required when there are several [[hsm]]")
        hsm_name = next(iter(hsms))
    if hsm_name not in hsms:
        raise ConfigError(
            f"{s.name('hsm')}: no [[hsm]] backend named {hsm_name!r} (name a backend: "
            f"{', '.join(sorted(hsms))})"
        )
    health_label = hsms[hsm_name].health_key_label

    keys = s.strings("keys", [])
    for i, key_id in enumerate(keys):
        if key_id != "*" and not valid_key_id(key_id):
            raise ConfigError(f'{s.name("keys")}[{i}]: must be "*" or 1-128 of A-Za-z0-9._-')
    labels_section = s.sub("key_labels")
    key_labels: dict[str, str] = {}
    for key_id in list(labels_section.data):
        label = labels_section.get(key_id, "", str)
        if not valid_key_id(key_id) or not label:
            raise ConfigError(f"{labels_section.name(key_id)}: needs a valid id and a label")
        key_labels[key_id] = label
    labels_section.finish()
    for key_id in keys:
        if key_id != "*" and key_labels.get(key_id, key_id) == health_label:
            raise ConfigError(
                f"{s.name('keys')}: {key_id!r} is the health test key, never a customer key"
            )
    disabled = s.strings("disabled_keys", [])
    quota = s.sub("quota")
    rate = quota.get("rate", 0, (int, float))
    burst = quota.get("burst", 0, int)
    if rate < 0 or burst < 0:
        raise ConfigError(f"{quota.where}: rate and burst must be >= 0")
    quota.finish()

    deny_raw = s.get("deny", [], list)
    deny = [_deny(_Section(d, f"{s.name('deny')}[{i}]")) for i, d in enumerate(deny_raw)]
    creds_raw = s.get("credentials", [], list)
    if not creds_raw:
        raise ConfigError(f"{s.name('credentials')}: at least one [[keystore.credentials]]")
    creds = [
        _credential(_Section(c, f"{s.name('credentials')}[{i}]"), base)
        for i, c in enumerate(creds_raw)
    ]
    seen: set[str] = set()
    for i, cred in enumerate(creds):
        if cred.access_key_id in seen:
            raise ConfigError(f"{s.name('credentials')}[{i}].access_key_id: duplicate in store")
        seen.add(cred.access_key_id)
    cfg = KeystoreConfig(
        name=name,
        path_prefix=prefix,
        hsm=hsm_name,
        regions=frozenset(s.strings("regions", [])),
        keys=frozenset(keys),
        key_labels=key_labels,
        quota_rate=float(rate),
        quota_burst=burst,
        disabled_keys=frozenset(disabled),
        enabled=s.get("enabled", True, bool),
        deny=deny,
        credentials=creds,
        policy=_policy(s, base, name, deny),
    )
    s.finish()
    return cfg


def load_config(path: Path | str, env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and resolve the config file at ``path`` (env overrides from ``env``)."""
    path = Path(path).expanduser().resolve()
    env = os.environ if env is None else env
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    base = path.parent
    root = _Section(raw, "")

    server = _env_overrides(_server(root.sub("server")), env)
    tls = _tls(root.sub("tls"), base)
    control_dir = _control(root.sub("control"), base)
    metrics = _metrics(root.sub("metrics"), env)
    logging_cfg = _logging(root.sub("logging"))
    audit = _audit(root.sub("audit"), base)
    health = _health(root.sub("health"))
    custody = _custody(root.sub("custody"))

    hsm_list = root.get("hsm", [], list)
    if not hsm_list:
        raise ConfigError("hsm: at least one [[hsm]] table is required")
    if len(hsm_list) > 10:
        raise ConfigError("hsm: at most 10 [[hsm]] tables (GetHealthStatus reports <= 10)")
    hsms: dict[str, HsmConfig] = {}
    models: dict[str, str] = {}
    member_of: dict[str, str] = {}
    so_pins: dict[str, str] = {}
    for i, table in enumerate(hsm_list):
        table, backend, so_pin = _member_options(table, f"hsm[{i}]")
        cfg, model = _hsm(_Section(table, f"hsm[{i}]"), base)
        if cfg.name in hsms:
            raise ConfigError(f"hsm[{i}].name: duplicate name {cfg.name!r}")
        hsms[cfg.name] = cfg
        models[cfg.name] = model
        member_of[cfg.name] = backend or cfg.name
        if so_pin:
            so_pins[cfg.name] = so_pin
    backends = _backends(hsms, member_of)
    targets = {b: hsms[names[0]] for b, names in backends.items()}
    _check_audit_anchor(audit, hsms)

    store_list = root.get("keystore", [], list)
    if not store_list:
        raise ConfigError("keystore: at least one [[keystore]] table is required")
    stores: list[KeystoreConfig] = []
    for i, table in enumerate(store_list):
        store = _keystore(_Section(table, f"keystore[{i}]"), base, targets)
        for other in stores:
            if other.name == store.name:
                raise ConfigError(f"keystore[{i}].name: duplicate name {store.name!r}")
            if other.path_prefix == store.path_prefix:
                raise ConfigError(
                    f"keystore[{i}].path_prefix: {store.path_prefix!r} already used by "
                    f"key store {other.name!r}"
                )
        stores.append(store)
    root.finish()
    return Config(
        path=path,
        server=server,
        tls=tls,
        metrics=metrics,
        logging=logging_cfg,
        audit=audit,
        health=health,
        hsms=list(hsms.values()),
        keystores=stores,
        hsm_models=models,
        custody=custody,
        backends=backends,
        so_pin_refs=so_pins,
        control_dir=control_dir,
    )


def _control(s: _Section, base: Path) -> Path:
    """[control] dir: where the launcher's socket and the drain/status files live."""
    value = s.get("dir", "control", str)
    if not value:
        raise ConfigError(f"{s.name('dir')}: must not be empty")
    s.finish()
    return _path(base, value)


# --------------------------------------------------------------------------- HSM backends


def _member_options(table: Any, where: str) -> tuple[Any, str | None, str | None]:
    """Take ``backend`` and ``so_pin`` out of one [[hsm]] table (the rest goes to _hsm)."""
    if not isinstance(table, dict):
        return table, None, None
    rest = dict(table)
    backend = rest.pop("backend", None)
    so_pin = rest.pop("so_pin", None)
    if backend is not None and (not isinstance(backend, str) or not valid_key_id(backend)):
        raise ConfigError(f"{where}.backend: must be 1-128 of A-Za-z0-9._-")
    if so_pin is not None and (
        not isinstance(so_pin, str) or not so_pin.startswith(("file:", "env:"))
    ):
        raise ConfigError(f'{where}.so_pin: must be a secret reference ("file:PATH" or "env:NAME")')
    return rest, backend, so_pin


def _backends(hsms: Mapping[str, HsmConfig], member_of: Mapping[str, str]) -> dict[str, list[str]]:
    """Group [[hsm]] members into backends and check that members can stand in for each other.

    A plain [[hsm]] is a one-member backend named after itself, so every older config keeps
    its meaning. Members of one backend hold the same keys, so they must share the health test
    key label and the plaintext limit; a backend name must not be another member's name.
    """
    backends: dict[str, list[str]] = {}
    for name, backend in member_of.items():
        backends.setdefault(backend, []).append(name)
    for backend, names in backends.items():
        if backend in hsms and backend not in names:
            raise ConfigError(
                f"hsm: backend {backend!r} is also the name of [[hsm]] {backend!r} "
                f"of backend {member_of[backend]!r}; give it another name"
            )
        first = hsms[names[0]]
        for name in names[1:]:
            other = hsms[name]
            for option in ("health_key_label", "max_plaintext_bytes"):
                if getattr(other, option) != getattr(first, option):
                    raise ConfigError(
                        f"hsm: [[hsm]] {name!r} and {first.name!r} are members of backend "
                        f"{backend!r} but differ in {option}; members must be interchangeable"
                    )
    return backends
