"""Checks `serve` runs before any worker starts, so a bad setup fails with exit status 2 and one
clear line instead of a crash loop of workers."""

from __future__ import annotations

import socket
from pathlib import Path

from xksproxy.config import ConfigError
from xksproxy.runtime.plan import Plan


def check_tls_files(p: Plan) -> None:
    """The certificate, key and client CA exist, and granian can read the key's format."""
    for what, path in (("cert_file", p.cert_file), ("key_file", p.key_file)):
        if not Path(path).is_file():
            raise ConfigError(
                f"[tls] {what}: {path} does not exist (run `xksproxy init`, "
                "configure a certificate, or use --plain-http behind a TLS proxy)"
            )
    if p.client_ca_file is not None and not Path(p.client_ca_file).is_file():
        raise ConfigError(f"[tls] client_ca_file: {p.client_ca_file} does not exist")
    if p.server == "granian" and b"BEGIN PRIVATE KEY" not in Path(p.key_file).read_bytes():
        raise ConfigError(
            f"[tls] key_file: granian reads only unencrypted PKCS#8 keys "
            f"('BEGIN PRIVATE KEY'); convert with `openssl pkcs8 -topk8 -nocrypt "
            f"-in {p.key_file}` or use --server hypercorn"
        )


def check_bind_available(p: Plan) -> None:
    """Refuse to start when something already listens on the address.

    granian binds with SO_REUSEPORT, so without this check a second proxy (perhaps with another
    config) starts "successfully" on a busy port and the kernel silently splits KMS traffic
    between the two. A plain bind (no SO_REUSEPORT) fails against any listener.
    """
    family = socket.AF_INET6 if ":" in p.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are fine
        try:
            s.bind((p.host, p.port))
        except OSError as exc:
            raise ConfigError(
                f"[server] bind: cannot listen on {p.host}:{p.port}: {exc.strerror or exc} "
                "(stop the process using it or choose another --bind)"
            ) from None
