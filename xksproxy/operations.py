"""Attach the operations features to one worker's app: admission, quotas, metrics, audit, reload.

One call from :func:`xksproxy.app.create_app` so the app itself stays ignorant of them; each
feature hooks in through the app's seams (admission hooks, observers, lifespan hooks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xksproxy import admission, audit, metrics, reload
from xksproxy.quotas import Quotas


@dataclass
class Operations:
    quotas: Quotas
    admission: admission.Admission
    audit: audit.AuditLog | None
    reloader: reload.Reloader | None


def install(app: Any, *, reload_interval_s: float = 1.0) -> Operations:
    quotas = Quotas.from_config(app.config)
    adm = admission.install(app, quotas=quotas)
    metrics.install(app)
    audit_log = audit.install(app)
    reloader = reload.install(app, getattr(app.config, "path", None),
                              interval_s=reload_interval_s, quotas=quotas)
    ops = Operations(quotas, adm, audit_log, reloader)
    app.operations = ops
    return ops
