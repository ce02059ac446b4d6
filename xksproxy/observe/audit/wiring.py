"""Wire the audit log into one worker's app: one record per finished request, and the refusal
of Encrypt/Decrypt while the chain has an unacknowledged gap or cannot be written.

The request path hands the finished :class:`RequestContext` over as it is (no dict); the
writer thread makes it into its record (:func:`install`'s ``record_of``). A successful
Encrypt/Decrypt is handed over in ``app.before_answer``, i.e. before its answer is sent: when
the audit queue is full it fails with 429 ThrottlingException (``BACKLOG_MESSAGE``) rather than
succeed unrecorded (why fail rather than wait: :mod:`xksproxy.observe.audit.writer`, "Never
blocks a request"). Every other request is handed over by the observer, after its answer.

Why 500 InternalException for the refusal: the XKS spec reserves 503 for a dependency that
*timed out* (KMS retries it as transient); a broken or unwritable audit trail does not heal by
retrying, it needs an operator, and "internal failure of the proxy" is what it is. KMS then
reports that the external key store failed, and the customer's operation fails closed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xksproxy.observe import metrics
from xksproxy.observe.audit import anchor
from xksproxy.observe.audit.chain import GAP_REASONS
from xksproxy.observe.audit.writer import QUEUE_SIZE, AuditLog, Record, iso_time
from xksproxy.observe.requestlog import RequestContext
from xksproxy.xks.errors import InternalException, ThrottlingException

if TYPE_CHECKING:
    from xksproxy.config import Config

#: What KMS is told while the audit trail is broken (no detail: the log and metrics have it).
REFUSAL_MESSAGE = (
    "the proxy's audit trail has an unacknowledged gap or cannot be written; "
    "an operator must run 'xksproxy audit acknowledge'"
)

#: What KMS is told when a successful Encrypt/Decrypt cannot be handed to the audit writer.
BACKLOG_MESSAGE = "the proxy's audit log is not keeping up; retry shortly"
#: ``xksproxy_throttled_total`` reason of such a refusal.
BACKLOG_REASON = "audit_backlog"
#: ``ctx.extra`` key: this request's record was queued before its answer (``hand_off``).
_HANDED_OFF = "auditHandedOff"

_METADATA_FIELDS = {
    "kmsKeyArn": "kmsKeyArn",
    "kmsViaService": "kmsViaService",
    "awsSourceVpc": "awsSourceVpc",
    "awsSourceVpce": "awsSourceVpce",
}


def install(app: Any, *, queue_size: int = QUEUE_SIZE) -> AuditLog | None:
    """Write one audit record per finished request of ``app`` (``[audit] file``; None = off);
    ``queue_size`` records may wait for the writer thread (tests make it small).

    Request metadata beyond what the context carries (kmsKeyArn, kmsViaService, source VPC/VPCE)
    is read from ``ctx.extra["metadata"]`` when the app provides it.
    """
    cfg = app.config.audit
    if cfg.file is None or cfg.key is None:
        return None
    scheduler = None
    config_path = getattr(app.config, "path", None)
    if cfg.anchor_hsm is not None and cfg.checkpoint_interval_s > 0 and config_path is not None:
        scheduler = anchor.Scheduler(Path(config_path), cfg.file, cfg.checkpoint_interval_s)
    worker = os.getpid()

    def token_for(store: str | None) -> str | None:
        if store is None:
            return None
        config: Config = app.config
        for s in config.keystores:
            if s.name == store:
                return s.hsm
        return None

    def record_of(c: RequestContext) -> Record:
        """A finished request's record (writer thread): only FIELDS, only str/int/float
        values, None left out -- the form record() would make of it, without a second dict."""
        rec: Record = {"time": iso_time(c.wall)}
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
        if c.deny_rule is not None:
            rec["denyRule"] = c.deny_rule  # the policy that decided (never in the caller's message)
        rec["status"] = int(c.status)
        rec["latencyMs"] = float(c.latency_ms)
        key_state = c.extra.get("keyState")
        if type(key_state) is str:
            rec["keyState"] = key_state  # a key not "active" (e.g. compromised)
        token = token_for(c.store)
        if token is not None:
            rec["token"] = token
        rec["worker"] = worker
        return rec

    audit_log = AuditLog(
        cfg.file,
        cfg.key,
        cfg.rotate_bytes,
        keep_files=cfg.keep_files,
        on_drop=metrics.audit_dropped,
        on_gap=metrics.audit_gap,
        on_lost=metrics.audit_lost,
        on_batch=scheduler.after_batch if scheduler is not None else None,
        request_record=record_of,
        queue_size=queue_size,
    )

    def is_crypto(c: RequestContext) -> bool:
        return c.spec is not None and c.spec.audit_kind == "crypto"

    def hand_off(c: RequestContext) -> None:
        """Before a successful Encrypt/Decrypt is answered: its record is queued, or it fails."""
        if not is_crypto(c):
            return
        c.extra[_HANDED_OFF] = True  # before the offer: the writer thread may read c at once
        if not audit_log.hand_off(c):
            del c.extra[_HANDED_OFF]
            metrics.observe_throttled(c, BACKLOG_REASON)
            raise ThrottlingException(BACKLOG_MESSAGE)

    def observer(c: RequestContext) -> None:
        # Every other request is recorded here, after its answer: one that hand_off queued is
        # marked, so an answer that ever bypassed before_answer would still be recorded.
        if _HANDED_OFF not in c.extra:
            audit_log.enqueue_request(c)

    async def stop() -> None:
        audit_log.close()
        if scheduler is not None:
            scheduler.close()

    def gauges() -> list[tuple[str, dict[str, str], float]]:
        # Runs in the metrics flusher thread, never on the event loop (statvfs may touch disk).
        out: list[tuple[str, dict[str, str], float]] = [
            ("xksproxy_audit_last_seq", {}, float(audit_log.last_seq)),
            ("xksproxy_audit_integrity_ok", {}, 1.0 if audit_log.integrity_ok else 0.0),
        ]
        try:
            st = os.statvfs(audit_log.path.parent)
            out.append(("xksproxy_audit_disk_free_bytes", {}, float(st.f_bavail * st.f_frsize)))
        except OSError:
            pass
        return out

    def refuse_unaudited(c: RequestContext) -> None:
        """Encrypt/Decrypt only while every record can be kept (a flag read, no disk I/O)."""
        if is_crypto(c) and not audit_log.integrity_ok:
            c.extra["refused"] = "audit"
            raise InternalException(REFUSAL_MESSAGE)

    # Exported at 0 from the start: Prometheus' increase() misses a counter's first sample.
    for reason in sorted(GAP_REASONS):
        metrics.REGISTRY.inc("xksproxy_audit_gaps_total", {"reason": reason}, 0)
    metrics.REGISTRY.inc("xksproxy_audit_lost_total", {}, 0)
    metrics.REGISTRY.add_collector(gauges)
    if cfg.refuse_on_gap:
        app.before_dispatch.append(refuse_unaudited)
    # Started here, not in the lifespan: create_app runs in the worker after fork, and requests
    # answered before startup (404s, 401s) must be recorded too.
    audit_log.start()
    if app.before_answer is not None:  # the slot is the audit's alone (service/app.py)
        raise RuntimeError("app.before_answer is taken: the audit hand-off must be the last step")
    app.before_answer = hand_off
    app.observers.append(observer)
    app.on_shutdown.append(stop)
    return audit_log
