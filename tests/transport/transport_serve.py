"""`xksproxy.runtime.server.serve` with the CLI's serve options, for the transport probe apps.

Probe apps never touch an HSM, so they go straight to the launcher instead of through
`xksproxy serve`, which first checks that every [[hsm]] token opens. Real-app tests use the CLI.
"""

from __future__ import annotations

import argparse
import sys

from xksproxy.runtime.server import serve


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--bind")
    p.add_argument("--server")
    p.add_argument("--workers", type=int)
    p.add_argument("--plain-http", action="store_true")
    a = p.parse_args()
    return serve(
        a.config,
        bind=a.bind,
        plain_http=True if a.plain_http else None,
        server=a.server,
        workers=a.workers,
    )


if __name__ == "__main__":
    sys.exit(main())
