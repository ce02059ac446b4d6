"""Attach the operations features to one worker's app: admission, quotas, metrics, audit, reload.

One call from :func:`xksproxy.runtime.factory.create_app` so the app itself stays ignorant of
them; each feature hooks in through the app's seams (admission hooks, observers, lifespan hooks).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from xksproxy import environment
from xksproxy.observe import audit, metrics
from xksproxy.runtime import drain, member_sync, patches, reload
from xksproxy.service import admission
from xksproxy.service.quotas import Quotas


@dataclass
class Operations:
    quotas: Quotas
    admission: admission.Admission
    audit: audit.AuditLog | None
    reloader: reload.Reloader | None


def install(app: Any, *, reload_interval_s: float = 1.0) -> Operations:
    quotas = Quotas.from_config(app.config)
    adm = admission.install(app, quotas=quotas)
    drain.install(app)  # the launcher's drain flag, polled; /ready and Connection: close
    metrics.install(app)
    audit_log = audit.install(app)
    reloader = reload.install(
        app, getattr(app.config, "path", None), interval_s=reload_interval_s, quotas=quotas
    )
    member_sync.install(app)  # `xksproxy hsm drain/undrain/status` (runtime/control.py)
    ops = Operations(quotas, adm, audit_log, reloader)
    app.operations = ops
    return ops


@dataclass
class LauncherHooks:
    """What the launcher's parent process holds for operations; ``close()`` at exit."""

    listener: metrics.MetricsListener | None

    @property
    def metrics_url(self) -> str | None:
        return self.listener.url if self.listener is not None else None

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None


def prepare_launcher(metrics_bind: str | None, workers: int) -> LauncherHooks:
    """Everything the launcher's parent must do *before* starting workers, in one call.

    - starts the metrics listener on ``metrics_bind`` (None/"" = off) and exports the shared
      snapshot directory to the workers;
    - exports ``XKSPROXY_WORKERS`` (quotas divide the host-wide rate by it);
    - prepares the reload trigger and routes SIGHUP (ours and granian's) to a worker self-reload.
    Print ``hooks.metrics_url`` when not None. A metrics bind that fails (port in use) is a
    warning on stderr, not a reason to refuse KMS traffic.
    """
    import os
    import signal

    os.environ[environment.WORKERS.name] = str(max(1, workers))
    reload.prepare_parent()
    signal.signal(signal.SIGHUP, reload.request_reload)
    patches.route_granian_sighup(reload.request_reload)
    listener = None
    if metrics_bind:
        try:
            listener = metrics.start_listener(metrics_bind)
        except (OSError, ValueError) as exc:  # serving KMS matters more than metrics
            reason = getattr(exc, "strerror", None) or str(exc)
            print(
                f"xksproxy: WARNING: metrics listener on {metrics_bind} failed ({reason}); "
                "serving without metrics. Another proxy on this host? Give each one its own "
                '[metrics] bind (e.g. 127.0.0.1:9465), or bind = "" to turn metrics off',
                file=sys.stderr,
                flush=True,
            )
    return LauncherHooks(listener)
