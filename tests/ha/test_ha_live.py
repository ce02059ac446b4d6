"""Two HSM members behind one key store, served for real (see conftest.py for the set-up).

Each test leaves both members in service, so they pass in any order on the shared proxy.
"""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

BOTH_ACTIVE = {"softhsm-0": "ACTIVE", "softhsm-1": "ACTIVE"}


def _status(proxy) -> dict[str, dict]:
    res = proxy.cli("hsm", "status", "--json")
    assert res.returncode == 0, res.stderr
    return {row["member"]: row for row in json.loads(res.stdout)}


def _wait_state(proxy, member: str, state: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    row: dict = {}
    while time.monotonic() < deadline:
        row = _status(proxy)[member]
        if row["state"] == state:
            return row
        time.sleep(0.3)
    return row


def test_health_lists_both_members_active(ha_proxy) -> None:
    assert ha_proxy.wait_health(BOTH_ACTIVE) == BOTH_ACTIVE
    rows = _status(ha_proxy)
    assert {r["state"] for r in rows.values()} == {"active"}
    assert all(len(r["workers"]) == 2 for r in rows.values())  # every worker reports


def test_created_key_decrypts_after_either_member_is_drained(ha_proxy) -> None:
    res = ha_proxy.cli("keys", "create", "ha-key", "--hsm", "softhsm")
    assert res.returncode == 0, res.stderr
    assert "softhsm-0, softhsm-1" in res.stdout
    client = ha_proxy.client()
    try:
        status, enc = client.encrypt("ha-key", b"replicated inside the HSMs")
        assert status == 200, enc
        for member in ("softhsm-0", "softhsm-1"):
            res = ha_proxy.cli("hsm", "drain", member)
            assert res.returncode == 0, res.stderr
            assert _status(ha_proxy)[member]["state"] == "drained"
            for _ in range(4):  # every worker: only the other member answers now
                status, dec = client.decrypt("ha-key", enc)
                assert status == 200, dec
            res = ha_proxy.cli("hsm", "undrain", member)
            assert res.returncode == 0, res.stderr
    finally:
        client.close()
    assert ha_proxy.wait_health(BOTH_ACTIVE) == BOTH_ACTIVE


def test_drain_refuses_the_last_member_and_unknown_names(ha_proxy) -> None:
    assert ha_proxy.cli("hsm", "drain", "softhsm-0").returncode == 0
    try:
        res = ha_proxy.cli("hsm", "drain", "softhsm-1")
        assert res.returncode == 1 and "last member" in res.stderr
    finally:
        assert ha_proxy.cli("hsm", "undrain", "softhsm-0").returncode == 0
    res = ha_proxy.cli("hsm", "drain", "no-such-member")
    assert res.returncode == 2 and "no [[hsm]] member" in res.stderr
    audit = (ha_proxy.state_dir / "audit" / "xksproxy-audit.log").read_text()
    drains = [json.loads(line) for line in audit.splitlines() if "xksproxy:hsm-" in line]
    assert {"xksproxy:hsm-drain", "xksproxy:hsm-undrain"} <= {r["kmsOperation"] for r in drains}
    assert any(r["outcome"] == "error" and r["token"] == "softhsm-1" for r in drains)
    verify = ha_proxy.cli(
        "audit", "verify", str(ha_proxy.state_dir / "audit" / "xksproxy-audit.log")
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_drain_under_load_loses_no_request(ha_proxy) -> None:
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    reasons: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        client = ha_proxy.client()
        try:
            while not stop.is_set():
                why = ""
                try:
                    status, enc = client.encrypt("demo", os.urandom(64))
                    if status == 200:
                        status, enc = client.decrypt("demo", enc)
                    if status != 200:
                        why = f"{status} {enc.get('errorName')} {enc.get('errorMessage')}"
                except OSError as exc:
                    why = type(exc).__name__
                with lock:
                    counts["failed" if why else "ok"] += 1
                    if why:
                        reasons.append(why)
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        for member in ("softhsm-0", "softhsm-1"):
            assert ha_proxy.cli("hsm", "drain", member).returncode == 0
            time.sleep(0.5)
            assert ha_proxy.cli("hsm", "undrain", member).returncode == 0
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert counts["failed"] == 0, (counts, reasons[:5])
    assert counts["ok"] > 0


def test_member_with_device_errors_is_taken_out_and_comes_back(ha_proxy) -> None:
    ha_proxy.shim.set("device_error")
    client = ha_proxy.client()
    try:
        results = [client.round_trip("demo", os.urandom(32)) for _ in range(20)]
        assert all(results), results  # failed over, never surfaced to the caller
        row = _wait_state(ha_proxy, "softhsm-1", "failed")
        assert row["state"] == "failed"
        got = ha_proxy.wait_health({"softhsm-0": "ACTIVE", "softhsm-1": "UNAVAILABLE"})
        assert got == {"softhsm-0": "ACTIVE", "softhsm-1": "UNAVAILABLE"}
    finally:
        ha_proxy.shim.set("ok")
        client.close()
    assert _wait_state(ha_proxy, "softhsm-1", "active", timeout=30)["state"] == "active"
    assert ha_proxy.wait_health(BOTH_ACTIVE, timeout=30) == BOTH_ACTIVE


def test_doctor_flags_a_key_missing_on_one_member(ha_proxy) -> None:
    res = ha_proxy.cli("keys", "create", "drift-key", "--hsm", "softhsm")
    assert res.returncode == 0, res.stderr
    res = ha_proxy.cli("keys", "delete", "drift-key", "--hsm", "softhsm-1")
    assert res.returncode == 0, res.stderr
    res = ha_proxy.cli("doctor")
    assert res.returncode == 1
    assert "key drift-key missing on softhsm-1" in res.stdout
    res = ha_proxy.cli("keys", "replicate", "--from", "softhsm-0", "--to", "softhsm-1", "drift-key")
    assert res.returncode == 0, res.stderr
    res = ha_proxy.cli("doctor")
    assert "members softhsm" in res.stdout and "missing" not in res.stdout


@pytest.mark.parametrize("member", ["softhsm-0"])
def test_control_socket_is_owner_only(ha_proxy, member: str) -> None:
    sock = ha_proxy.state_dir / "control" / "control.sock"
    assert sock.exists()
    assert (sock.stat().st_mode & 0o777) == 0o600
    assert (sock.parent.stat().st_mode & 0o777) == 0o700


@pytest.mark.slow
def test_repeated_drains_under_heavier_load_lose_no_request(ha_proxy) -> None:
    stop = threading.Event()
    failed: list[str] = []
    done = [0]

    def worker() -> None:
        client = ha_proxy.client()
        try:
            while not stop.is_set():
                status, enc = client.encrypt("demo", os.urandom(256))
                if status == 200:
                    status, enc = client.decrypt("demo", enc)
                if status != 200:
                    failed.append(f"{status} {enc.get('errorName')}")
                done[0] += 1
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        for _ in range(2):
            for member in ("softhsm-0", "softhsm-1"):
                assert ha_proxy.cli("hsm", "drain", member).returncode == 0
                assert ha_proxy.cli("hsm", "undrain", member).returncode == 0
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not [f for f in failed if not f.startswith("429")], failed  # shedding is not loss
    assert done[0] > 0


def test_rotation_and_transitions_reach_every_member(ha_proxy) -> None:
    """Members hold the same versions and lifecycle documents (issue 13 x issue 12): `keys
    rotate` creates the new version on one member and replicates it in the same command, and a
    transition is written to every member, so whichever member serves agrees on the state."""
    assert ha_proxy.cli("keys", "create", "rot-key", "--hsm", "softhsm").returncode == 0
    res = ha_proxy.cli("keys", "rotate", "rot-key", "--hsm", "softhsm", "--reason", "test")
    assert res.returncode == 0, res.stderr
    res = ha_proxy.cli("keys", "suspend", "rot-key", "--hsm", "softhsm", "--reason", "test")
    assert res.returncode == 0, res.stderr
    for member in ("softhsm-0", "softhsm-1"):
        res = ha_proxy.cli("keys", "show", "rot-key", "--hsm", member, "--json")
        assert res.returncode == 0, res.stderr
        shown = json.loads(res.stdout)
        assert shown["state"] == "suspended", (member, shown)
        assert [v["version"] for v in shown["versions"]] == [0, 1], (member, shown)
    res = ha_proxy.cli("doctor")
    assert "rot-key" not in res.stdout or "missing" not in res.stdout


def test_delete_on_a_backend_removes_the_key_from_every_member(ha_proxy) -> None:
    """`keys create --hsm BACKEND` made the key on every member, so deleting it by the backend's
    name removes it from every member (naming one member stays the drift-repair tool); doctor
    checks the backend's store keys without crashing on the backend name."""
    assert ha_proxy.cli("keys", "create", "del-key", "--hsm", "softhsm").returncode == 0
    res = ha_proxy.cli("keys", "delete", "del-key", "--hsm", "softhsm")
    assert res.returncode == 0, res.stderr
    for member in ("softhsm-0", "softhsm-1"):
        res = ha_proxy.cli("keys", "list", "--hsm", member, "--json")
        assert res.returncode == 0, res.stderr
        assert "del-key" not in {k["id"] for k in json.loads(res.stdout)}, member
    res = ha_proxy.cli("doctor")
    assert "check crashed" not in res.stdout, res.stdout
    assert res.stdout.count("key demo/") == 2, res.stdout  # the store, once per member
