"""The serving plan: what `xksproxy serve` will run, resolved from the config and CLI overrides.

Why a separate, pure step: every decision (bind, worker count, which server, whether mTLS is
enforced and how) is made here, before any process or socket exists, so it is tested without
starting anything (``tests/transport/test_plan.py``) and both runners receive the same answer.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from xksproxy.bind import parse_bind
from xksproxy.config import Config, ConfigError
from xksproxy.runtime import tls

SERVERS = ("granian", "hypercorn")


@dataclass(frozen=True)
class Plan:
    """Everything the launchers need, resolved from config + overrides (no secrets inside)."""

    config_path: Path
    host: str
    port: int
    server: str
    workers: int
    plain_http: bool
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None
    allowed_subjects: tuple[str, ...]
    log_level: str
    stores: tuple[tuple[str, str], ...]  # (name, URI path)
    metrics_bind: str | None = None
    drain_grace_s: float = 10.0  # SIGTERM: /ready 503 and keep serving this long (runtime/drain)
    notes: tuple[str, ...] = ()  # decisions the operator must see at start

    @property
    def scheme(self) -> str:
        return "http" if self.plain_http else "https"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def plan(
    config: Config,
    *,
    bind: str | None = None,
    plain_http: bool | None = None,
    server: str | None = None,
    workers: int | None = None,
) -> Plan:
    """Resolve the effective serving plan; raises ConfigError for impossible combinations."""
    try:
        host, port = parse_bind(bind or config.server.bind)
    except ValueError as exc:
        raise ConfigError(f"{'--bind' if bind else '[server] bind'}: {exc}") from None
    if port == 0:
        port = _free_port(host)
    plain = config.server.plain_http if plain_http is None else plain_http
    chosen = server or config.server.server
    if chosen not in SERVERS:
        raise ConfigError(f"[server] server must be one of {', '.join(SERVERS)}, got {chosen!r}")
    n = config.server.workers if workers is None else workers
    if n < 0:
        raise ConfigError(f"[server] workers must be >= 0, got {n}")
    n = n or os.cpu_count() or 1
    ca = config.tls.client_ca_file
    notes: list[str] = []
    if ca is not None and plain:
        notes.append(
            "[tls] client_ca_file is ignored with plain HTTP: the load balancer that "
            "terminates TLS must authenticate KMS"
        )
    elif ca is not None and chosen == "granian":
        if server == "granian":
            raise ConfigError(
                "--server granian cannot enforce [tls] allowed_client_subjects (granian does not "
                "expose the client certificate); use --server hypercorn for mTLS"
            )
        notes.append(
            "mTLS is configured: serving with hypercorn, which can pin the client "
            "subject (granian cannot)"
        )
        chosen = "hypercorn"
    patterns = tls.allowed_subject_patterns(
        config.tls.allowed_client_subjects, [ks.regions for ks in config.keystores]
    )
    stores = tuple((ks.name, ks.uri_path) for ks in config.keystores)
    return Plan(
        config_path=Path(config.path).resolve(),
        host=host,
        port=port,
        server=chosen,
        workers=n,
        plain_http=plain,
        cert_file=config.tls.cert_file,
        key_file=config.tls.key_file,
        client_ca_file=None if plain else ca,
        allowed_subjects=patterns if ca is not None and not plain else (),
        log_level=config.logging.level,
        stores=stores,
        metrics_bind=config.metrics.bind or None,
        drain_grace_s=config.server.drain_grace_s,
        notes=tuple(notes),
    )


def _free_port(host: str) -> int:
    """Pick a free port for ``:0`` binds (tests); both servers need the number before binding."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
