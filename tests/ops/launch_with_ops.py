"""Test launcher: `xksproxy serve` plus the operations hooks its parent process must run.

``xksproxy.runtime.operations.prepare_launcher(metrics_bind, workers)`` before the workers start
(metrics listener + shared directory, XKSPROXY_WORKERS, SIGHUP routed to a worker self-reload),
print the metrics URL, ``close()`` at exit. This file is the reference sequence for server.py.

Usage: python launch_with_ops.py CONFIG BIND METRICS_BIND WORKERS
"""

from __future__ import annotations

import sys
from pathlib import Path

from xksproxy.runtime.operations import prepare_launcher
from xksproxy.runtime.server import serve


def main() -> int:
    config, bind, metrics_bind, workers = sys.argv[1:5]
    hooks = prepare_launcher(metrics_bind, int(workers))
    print(f"xksproxy: metrics on {hooks.metrics_url}", flush=True)
    try:
        return serve(Path(config), bind=bind, plain_http=True, workers=int(workers))
    finally:
        hooks.close()


if __name__ == "__main__":
    sys.exit(main())
