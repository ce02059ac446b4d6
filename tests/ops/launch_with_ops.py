"""Test launcher: what `xksproxy serve` must do in its parent process for operations.

1. ``metrics.start_listener(bind)`` before workers start (exports the shared metrics directory);
2. ``reload.prepare_parent()`` and route the parent's SIGHUP to ``reload.request_reload``
   (``reload.route_granian_sighup()`` for granian; workers then reload themselves, nothing is
   respawned); export ``XKSPROXY_WORKERS``;
3. then run the server as usual.

Usage: python launch_with_ops.py CONFIG BIND METRICS_BIND WORKERS
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from xksproxy import metrics, reload
from xksproxy.server import serve


def main() -> int:
    config, bind, metrics_bind, workers = sys.argv[1:5]
    listener = metrics.start_listener(metrics_bind)
    os.environ["XKSPROXY_WORKERS"] = workers  # quotas divide the host-wide rate by it
    reload.prepare_parent()
    signal.signal(signal.SIGHUP, reload.request_reload)  # until the server installs its own
    reload.route_granian_sighup()  # granian's own handler would respawn the workers
    print(f"xksproxy: metrics on {listener.url}", flush=True)
    try:
        return serve(Path(config), bind=bind, plain_http=True, workers=int(workers))
    finally:
        listener.close()


if __name__ == "__main__":
    sys.exit(main())
