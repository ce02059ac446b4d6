"""What the proxy writes: no plaintext, AAD, secret, PIN or signature anywhere, one request-log
JSON line per request carrying its kmsRequestId, denials naming their rule, a verifiable audit log.

Self-contained (passes alone and in any order): the module starts its own server on the suite's
state directory, sends its own traffic (every operation, a sensitive plaintext and AAD, a large
binary plaintext, a denied request), stops the server with SIGTERM so buffered output is on disk,
and then reads that server's output and audit log. One more test sweeps every log file of the
state directory for every sensitive value the suite has registered so far (more coverage when
it runs late, still correct when it runs first).
"""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conformance_helpers import (
    DENIED_PRINCIPAL,
    PRINCIPAL,
    SENSITIVE,
    SIGNATURES,
    BotocoreClient,
    botocore_headers,
    decrypt_body,
    encrypt_body,
    health_body,
    metadata_body,
    rid,
    secret_marker,
    sensitive_large,
)
from server_harness import Server, StateDir, copy_config, run_cli, start_server

DENY_RULE = "conformance-denied-role"


@dataclass
class Traffic:
    """What this module sent to its own server, and how that server ended."""

    server: Server
    audit_file: Path
    exit_code: int | None = None
    sensitive: list[tuple[str, bytes]] = field(default_factory=list)
    signatures: list[str] = field(default_factory=list)
    logged_ids: list[str] = field(default_factory=list)
    denied_ids: list[str] = field(default_factory=list)


def _send(client: BotocoreClient, traffic: Traffic, path: str, body: dict, cred) -> dict:
    data = json.dumps(body).encode()
    headers = botocore_headers(client.base_url + path, data, cred)
    traffic.signatures.append(headers["Authorization"].rsplit("Signature=", 1)[-1])
    reply = client.raw("POST", path, data, headers)
    return {"status": reply.status, "json": json.loads(reply.body or b"{}")}


@pytest.fixture(scope="module")
def traffic(state: StateDir) -> Traffic:
    config = copy_config(state, "xksproxy-logs.toml", {("audit", "file"): '"audit/logs-audit.log"'})
    server = start_server(state, config=config, log_name="server-logs")
    server.config_path = config
    result = Traffic(server=server, audit_file=state.path / "audit" / "logs-audit.log")
    store, cred = state.demo, state.demo.creds[0]
    client = BotocoreClient(server.base_url)
    try:
        plaintext, aad = secret_marker("logs-pt", 40), secret_marker("logs-aad", 40)
        large = sensitive_large("logs-large-pt", 4096)
        result.sensitive += [("logs-pt", plaintext), ("logs-aad", aad), ("logs-large", large)]
        demo = store.key_path
        sends = [
            ("metadata", lambda i: metadata_body(request_id=i)),
            ("encrypt", lambda i: encrypt_body(plaintext, aad=aad, request_id=i)),
            ("encrypt", lambda i: encrypt_body(large, request_id=i)),
        ]
        replies = []
        for op, body_for in sends:
            request_id = rid()
            reply = _send(client, result, demo("demo", op), body_for(request_id), cred)
            assert reply["status"] == 200, reply
            result.logged_ids.append(request_id)
            replies.append(reply["json"])
        sealed = replies[1]
        request_id = rid()
        body = decrypt_body(sealed, aad=aad, request_id=request_id)
        reply = _send(client, result, demo("demo", "decrypt"), body, cred)
        assert reply["status"] == 200, reply
        result.logged_ids.append(request_id)
        request_id = rid()
        body = metadata_body(principal=DENIED_PRINCIPAL, request_id=request_id)
        reply = _send(client, result, demo("demo", "metadata"), body, cred)
        assert reply["status"] == 403, reply
        result.denied_ids.append(request_id)
        reply = _send(client, result, store.health_path, health_body(), cred)
        assert reply["status"] == 200, reply
    finally:
        client.close()
        result.exit_code = server.stop()
    return result


SKIP_DIRS = {"secrets", "tokens", "softhsm", "tls"}


def log_files(state_dir: Path) -> list[Path]:
    """Server output captures plus every file under audit/log locations of the state dir."""
    found = []
    for p in state_dir.rglob("*"):
        if not p.is_file() or SKIP_DIRS & set(p.relative_to(state_dir).parts[:-1]):
            continue
        rel = p.relative_to(state_dir)
        if (
            p.suffix in {".out", ".log", ".jsonl"}
            or rel.parts[0] in {"audit", "log", "logs"}
            or ".log." in p.name
        ):
            found.append(p)
    return found


def needles(label: str, value: bytes) -> list[tuple[str, bytes]]:
    """Search forms of one sensitive value: raw, standard and urlsafe base64, hex (prefixes for
    large values, which a log might truncate)."""
    head = value[:30]
    forms = [
        ("raw", head),
        ("base64", base64.b64encode(head)[:40]),
        ("urlsafe-base64", base64.urlsafe_b64encode(head)[:40]),
        ("hex", head.hex().encode()),
    ]
    return [(f"{label}/{kind}", n) for kind, n in forms if len(n) >= 16]


def find_request_ids(obj: object) -> list[str]:
    if isinstance(obj, dict):
        out = [v for k, v in obj.items() if k == "kmsRequestId" and isinstance(v, str)]
        for v in obj.values():
            out += find_request_ids(v)
        return out
    if isinstance(obj, list):
        return [x for v in obj for x in find_request_ids(v)]
    return []


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
    return out


def _values_never_logged(state: StateDir, sensitive: list[tuple[str, bytes]]) -> list:
    """Everything that must never reach a log: the given values, SigV4 secrets and PINs."""
    values: list[tuple[str, bytes]] = list(sensitive)
    values += [(f"sigv4-secret-{i}", s.encode()) for i, s in enumerate(state.secrets_used)]
    for pin_file in sorted((state.path / "secrets").glob("*.pin")):
        pin = pin_file.read_text().strip()
        if len(pin) >= 6:
            values.append((f"pin:{pin_file.name}", pin.encode()))
    return values


def _hits(files: list[Path], values: list[tuple[str, bytes]], root: Path) -> list[str]:
    hits = []
    for path in files:
        data = path.read_bytes()
        for label, value in values:
            forms = needles(label, value) if len(value) >= 16 else [(label, value)]
            hits += [f"{path.relative_to(root)}: {kind}" for kind, n in forms if n in data]
    return sorted(set(hits))


def test_server_exits_on_sigterm(traffic: Traffic) -> None:
    assert traffic.exit_code is not None, "server ignored SIGTERM for 20 s and was killed"
    assert traffic.exit_code in (0, -15), f"exit code {traffic.exit_code}"


def test_no_plaintext_aad_secret_or_signature_in_its_logs(traffic: Traffic, state) -> None:
    files = [traffic.server.log_path, traffic.audit_file]
    assert all(p.is_file() for p in files), files
    values = _values_never_logged(state, traffic.sensitive)
    values += [(f"sigv4-signature-{i}", s.encode()) for i, s in enumerate(traffic.signatures)]
    hits = _hits(files, values, state.path)
    assert not hits, "sensitive values found in logs:\n" + "\n".join(hits[:40])
    # Control: the same scan does find what *should* be logged (the caller's principal ARN).
    assert all(PRINCIPAL.encode() in p.read_bytes() for p in files), "scan read no logs"


def test_no_sensitive_value_of_the_suite_in_any_log(traffic: Traffic, state) -> None:
    """Every log file of the state directory against every value registered so far (by this
    module and by whichever tests ran before it)."""
    files = log_files(state.path)
    assert traffic.server.log_path in files
    values = _values_never_logged(state, list(SENSITIVE))
    values += [(f"sigv4-signature-{i}", s.encode()) for i, s in enumerate(SIGNATURES)]
    hits = _hits(files, values, state.path)
    assert not hits, "sensitive values found in logs:\n" + "\n".join(hits[:40])


def test_one_request_log_line_per_request(traffic: Traffic) -> None:
    """Exactly one *request record* (a JSON line with kmsRequestId and a status/outcome) per
    request; other lines (e.g. an error report) may also carry the id for correlation."""
    any_line: dict[str, int] = {}
    records: dict[str, int] = {}
    for doc in json_lines(traffic.server.log_text()):
        is_record = bool({"status", "outcome", "result"} & set(doc))
        for request_id in set(find_request_ids(doc)):
            any_line[request_id] = any_line.get(request_id, 0) + 1
            if is_record:
                records[request_id] = records.get(request_id, 0) + 1
    wanted = traffic.logged_ids + traffic.denied_ids
    missing = [r for r in wanted if r not in any_line]
    assert not missing, f"{len(missing)}/{len(wanted)} kmsRequestIds never logged"
    bad = {r: records.get(r, 0) for r in wanted if records.get(r, 0) != 1}
    assert not bad, f"{len(bad)} requests without exactly one request record: {list(bad.items())}"


def test_startup_lines(traffic: Traffic) -> None:
    text = traffic.server.log_text()
    assert "xksproxy: listening on http://" + traffic.server.host in text, text[:2000]
    assert "xksproxy: key store" in text


def test_request_records_carry_spec_fields(traffic: Traffic) -> None:
    """xks-spec §9: kmsRequestId, kmsOperation, principal, key store, key id, result, latency."""
    wanted = set(traffic.logged_ids)
    records = [
        d
        for d in json_lines(traffic.server.log_text())
        if set(find_request_ids(d)) & wanted and {"status", "outcome", "result"} & set(d)
    ]
    assert len(records) == len(wanted)
    for doc in records:
        text = json.dumps(doc)
        assert PRINCIPAL in text, doc
        assert any(op in text for op in ("Encrypt", "Decrypt", "DescribeKey")), doc
        assert '"demo"' in text, f"no key store / key id in {doc}"
        assert any("latency" in k or "duration" in k for k in doc), f"no latency in {doc}"


def test_denials_name_the_rule(traffic: Traffic) -> None:
    lines = json_lines(traffic.server.log_text())
    for request_id in traffic.denied_ids:
        mine = [json.dumps(d) for d in lines if request_id in find_request_ids(d)]
        assert mine, f"denied request {request_id} not logged"
        assert any(DENY_RULE in m for m in mine), mine


def test_audit_log_verifies_and_detects_tampering(traffic: Traffic, state, tmp_path) -> None:
    """The audit trail exists, `xksproxy audit verify` accepts it and rejects a changed copy."""
    audit_dir = traffic.audit_file.parent
    files = sorted(
        p
        for p in audit_dir.glob(traffic.audit_file.name + "*")
        if p.is_file() and p.suffix not in {".head", ".lock"}
    )
    assert files, f"no audit log under {audit_dir}: {sorted(audit_dir.glob('*'))}"
    config = str(traffic.server.config_path or state.config)
    done = run_cli("audit", "verify", "--config", config, *map(str, files))
    assert done.returncode == 0, done.stdout + done.stderr
    victim = max(files, key=lambda p: p.stat().st_size)
    lines = victim.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 3, "audit log suspiciously short"
    copy = tmp_path / victim.name
    shutil.copy2(victim, copy)
    head = victim.with_name(victim.name + ".head")
    if head.exists():  # a faithful copy of the live log carries its head (verify is strict)
        shutil.copy2(head, copy.with_name(copy.name + ".head"))
    others = [str(p) for p in files if p != victim]
    done = run_cli("audit", "verify", "--config", config, *others, str(copy))
    assert done.returncode == 0, "control: an untouched copy must verify: " + done.stderr
    middle = len(lines) // 2
    lines[middle] = (
        lines[middle].replace(b"demo", b"dem0", 1)
        if b"demo" in lines[middle]
        else lines[middle][:-2] + b"X" + lines[middle][-1:]
    )
    copy.write_bytes(b"".join(lines))
    done = run_cli("audit", "verify", "--config", config, *others, str(copy))
    assert done.returncode != 0, "audit verify accepted a tampered log"
