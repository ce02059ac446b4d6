"""The catalogue of exposed series: name -> (type, help), and how gauges merge across workers.

One home for the names: the exposition reads its ``# HELP``/``# TYPE`` lines here and
``tests/ops/test_deploy_rules.py`` checks every alert and dashboard only uses names listed here.
"""

from __future__ import annotations

HELP: dict[str, tuple[str, str]] = {
    "xksproxy_requests_total": ("counter", "XKS requests by operation, key store and outcome."),
    "xksproxy_request_duration_seconds": (
        "histogram",
        "Time from request start to response, by operation, key store and outcome.",
    ),
    "xksproxy_errors_total": ("counter", "Error responses by errorName and operation."),
    "xksproxy_throttled_total": (
        "counter",
        "Requests answered 429 by reason (quota, in_flight, session_queue, audit_backlog, ...).",
    ),
    "xksproxy_hsm_call_duration_seconds": ("histogram", "PKCS#11 operation latency by token."),
    "xksproxy_hsm_session_wait_seconds": ("histogram", "Time spent waiting for an HSM session."),
    "xksproxy_hsm_sessions": ("gauge", "HSM sessions open (summed over workers)."),
    "xksproxy_hsm_sessions_in_use": ("gauge", "HSM sessions busy right now (summed over workers)."),
    "xksproxy_hsm_sessions_waiting": ("gauge", "Requests waiting for an HSM session."),
    "xksproxy_token_health": (
        "gauge",
        "1 for the health status each token reports (ACTIVE/DEGRADED/UNAVAILABLE).",
    ),
    "xksproxy_in_flight_requests": ("gauge", "Requests being processed (summed over workers)."),
    "xksproxy_slo_requests_total": ("counter", "Requests counted for the SLO."),
    "xksproxy_slo_good_requests_total": (
        "counter",
        "Requests answered within the deadline with status < 500, not shed.",
    ),
    "xksproxy_slo_within_budget_ratio": (
        "gauge",
        "Share of SLO requests that were good since the listener started.",
    ),
    "xksproxy_slo_objective": ("gauge", "SLO objective (share of good requests)."),
    "xksproxy_slo_latency_target_seconds": ("gauge", "Deadline a good request must meet."),
    "xksproxy_slo_error_budget_burn_rate": (
        "gauge",
        "Error-budget burn rate over a sliding window (1 = exactly on budget).",
    ),
    "xksproxy_audit_dropped_total": ("counter", "Audit records dropped (queue full)."),
    "xksproxy_request_log_dropped_total": (
        "counter",
        "Request-log lines dropped (stdout not draining, queue full).",
    ),
    "xksproxy_config_reloads_total": ("counter", "Configuration reloads by result."),
    "xksproxy_audit_last_seq": (
        "gauge",
        "Sequence number of the newest audit record (an off-host truncation anchor).",
    ),
    "xksproxy_workers": ("gauge", "Worker processes reporting metrics."),
    "xksproxy_audit_integrity_ok": (
        "gauge",
        "1 while the audit chain is whole and being written; 0 after a gap until acknowledged.",
    ),
    "xksproxy_audit_gaps_total": ("counter", "Gaps recorded on the audit chain, by reason."),
    "xksproxy_audit_lost_total": (
        "counter",
        "Audit records that could not be written (disk full, I/O error).",
    ),
    "xksproxy_audit_disk_free_bytes": (
        "gauge",
        "Bytes free for unprivileged users on the audit log's file system.",
    ),
    "xksproxy_hsm_member_state": (
        "gauge",
        "1 for the state each HSM member is in (active/failed/drained), max over workers.",
    ),
    "xksproxy_hsm_member_outstanding": ("gauge", "Calls in flight on an HSM member."),
    "xksproxy_hsm_member_calls_total": ("counter", "Calls sent to an HSM member by operation."),
    "xksproxy_hsm_member_errors_total": (
        "counter",
        "Calls an HSM member failed with a device/session/connection error.",
    ),
    "xksproxy_hsm_member_call_duration_seconds": ("histogram", "Call latency per HSM member."),
    "xksproxy_hsm_member_failovers_total": (
        "counter",
        "Calls retried on another member after this member failed them.",
    ),
    # KMS-aligned signals (issue 14; deploy/OPERATIONS.md maps them to KMS's CloudWatch names)
    "xksproxy_tls_certificate_expiry_seconds": (
        "gauge",
        "Seconds until the served TLS certificate expires (KMS: XksProxyCertificateDaysToExpire).",
    ),
    "xksproxy_credential_age_seconds": (
        "gauge",
        "Age of each key store's newest credential: its secret file's mtime (KMS: "
        "XksProxyCredentialAge).",
    ),
    "xksproxy_ready": (
        "gauge",
        "Workers answering /ready with 200 (compare with xksproxy_workers).",
    ),
    "xksproxy_draining": ("gauge", "1 while the proxy drains after SIGTERM (/ready is 503)."),
}

#: Gauges merged with max instead of sum across workers.
MAX_GAUGES = frozenset(
    {
        "xksproxy_token_health",
        "xksproxy_slo_latency_target_seconds",
        "xksproxy_audit_last_seq",
        "xksproxy_audit_disk_free_bytes",
        "xksproxy_hsm_member_state",
        "xksproxy_tls_certificate_expiry_seconds",
        "xksproxy_credential_age_seconds",
        "xksproxy_draining",
    }
)

#: Gauges merged with min across workers (one worker with a broken chain makes it 0).
MIN_GAUGES = frozenset({"xksproxy_audit_integrity_ok"})

#: The values of ``xksproxy_token_health``'s ``status`` label.
HEALTH_STATES = ("ACTIVE", "DEGRADED", "UNAVAILABLE")
