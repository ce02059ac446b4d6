"""Container health check: GET /ready on the proxy's own socket; exit 0 when it answers 200.

Stdlib only (the image has no curl). The certificate is not verified: this asks "is this
instance ready", on loopback; KMS checks the certificate end to end. Environment:
XKSPROXY_BIND (default 0.0.0.0:8443; a wildcard host is probed on 127.0.0.1),
XKSPROXY_PLAIN_HTTP (1/true/yes/on: http), XKSPROXY_HEALTHCHECK_PATH (default /ready).
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request


def url() -> str:
    host, _, port = os.environ.get("XKSPROXY_BIND", "0.0.0.0:8443").rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - a wildcard bind is probed on loopback
        host = "127.0.0.1" if host != "::" else "::1"
    if ":" in host:
        host = f"[{host}]"
    plain = os.environ.get("XKSPROXY_PLAIN_HTTP", "").lower() in ("1", "true", "yes", "on")
    path = os.environ.get("XKSPROXY_HEALTHCHECK_PATH", "/ready")
    return f"{'http' if plain else 'https'}://{host}:{port}{path}"


def main() -> int:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        # S310: the URL is built above, always http(s) to this container's own port.
        with urllib.request.urlopen(url(), timeout=2, context=ctx) as resp:  # noqa: S310
            return 0 if resp.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck: {url()}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
