"""Wire the audit log into one worker's app: one record per finished request."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from xksproxy.observe import metrics
from xksproxy.observe.audit.writer import AuditLog, now_iso
from xksproxy.observe.requestlog import RequestContext

if TYPE_CHECKING:
    from xksproxy.config import Config

_METADATA_FIELDS = {
    "kmsKeyArn": "kmsKeyArn",
    "kmsViaService": "kmsViaService",
    "awsSourceVpc": "awsSourceVpc",
    "awsSourceVpce": "awsSourceVpce",
}


def install(app: Any) -> AuditLog | None:
    """Write one audit record per finished request of ``app`` (``[audit] file``; None = off).

    Request metadata beyond what the context carries (kmsKeyArn, kmsViaService, source VPC/VPCE)
    is read from ``ctx.extra["metadata"]`` when the app provides it.
    """
    cfg = app.config.audit
    if cfg.file is None or cfg.key is None:
        return None
    audit_log = AuditLog(cfg.file, cfg.key, cfg.rotate_bytes, on_drop=metrics.audit_dropped)
    worker = os.getpid()

    def token_for(store: str | None) -> str | None:
        if store is None:
            return None
        config: Config = app.config
        for s in config.keystores:
            if s.name == store:
                return s.hsm
        return None

    def observer(c: RequestContext) -> None:
        # Built directly in its final form (what record() would make of it, without a second
        # dict): only FIELDS, only str/int/float values, None left out.
        rec: dict[str, object] = {"time": now_iso()}
        for name, value in (
            ("kmsRequestId", c.kms_request_id),
            ("kmsOperation", c.kms_operation),
            ("principal", c.principal),
            ("keystore", c.store),
            ("keyId", c.key_id),
        ):
            if type(value) is str:
                rec[name] = value
        meta = c.extra.get("metadata")
        if isinstance(meta, dict):
            for src, dst in _METADATA_FIELDS.items():
                value = meta.get(src)
                if type(value) is str:
                    rec[dst] = value
        rec["outcome"] = c.outcome
        if c.error_name:
            rec["errorName"] = c.error_name
        rec["status"] = int(c.status)
        rec["latencyMs"] = float(c.latency_ms)
        key_state = c.extra.get("keyState")
        if type(key_state) is str:
            rec["keyState"] = key_state  # a key not "active" (e.g. compromised)
        token = token_for(c.store)
        if token is not None:
            rec["token"] = token
        rec["worker"] = worker
        audit_log.enqueue_clean(rec)

    async def stop() -> None:
        audit_log.close()

    metrics.REGISTRY.add_collector(
        lambda: [("xksproxy_audit_last_seq", {}, float(audit_log.last_seq))]
    )
    # Started here, not in the lifespan: create_app runs in the worker after fork, and requests
    # answered before startup (404s, 401s) must be recorded too.
    audit_log.start()
    app.observers.append(observer)
    app.on_shutdown.append(stop)
    return audit_log
