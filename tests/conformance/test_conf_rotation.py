"""SigV4 credential rotation on a running proxy (xks-spec §6: at least two credentials at once;
changes apply without a restart). Driven through the stable CLI (`credentials add/remove`)."""

from __future__ import annotations

import json
import time

import pytest
from conformance_helpers import BotocoreClient, Cred, assert_json_error, assert_ok, health_body
from server_harness import run_cli


def poll_status(client, path, cred, want: int, tries: int = 75, tick=None) -> int:
    """Health status with ``cred`` until it is ``want`` (bounded: ~15 s); returns the last one.
    ``tick()`` runs every round (keeps the bystander connection busy, checks it)."""
    status = -1
    for _ in range(tries):
        if tick is not None:
            tick()
        status = client.post(path, health_body(), cred).status
        if status == want:
            return status
        time.sleep(0.2)
    return status


@pytest.fixture(scope="module")
def rot(rotation_server):
    client = BotocoreClient(rotation_server.base_url)
    yield rotation_server, client
    client.close()


def test_add_then_remove_credential_without_restart(rot, stores, state):
    server, client = rot
    s = stores["second"]
    old = s.creds[0]
    # A bystander connection that only ever sends valid requests: reloads must not drop it.
    demo = stores["demo"]
    watcher = BotocoreClient(server.base_url)
    first = watcher.post(demo.health_path, health_body(), demo.creds[0])
    assert_ok(first)
    assert first.local_addr is not None

    def tick() -> None:
        r = watcher.post(demo.health_path, health_body(), demo.creds[0])
        assert_ok(r)
        assert r.local_addr == first.local_addr, (
            f"keep-alive connection dropped during reload: {first.local_addr} -> {r.local_addr}"
        )

    pid = server.proc.pid
    try:
        done = run_cli(
            "credentials", "add", "--config", str(server.config_path), "--keystore", s.prefix
        )
        tick()
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        cred_doc = doc.get("XksProxyAuthenticationCredential", doc)
        new = Cred(cred_doc["AccessKeyId"], cred_doc["RawSecretAccessKey"])
        state.secrets_used.append(new.secret)

        assert poll_status(client, s.health_path, new, 200, tick=tick) == 200, (
            "new credential never accepted"
        )
        assert_ok(client.post(s.health_path, health_body(), old))  # both valid during rotation

        done = run_cli(
            "credentials",
            "remove",
            "--config",
            str(server.config_path),
            "--keystore",
            s.prefix,
            old.akid,
        )
        tick()
        assert done.returncode == 0, done.stderr
        assert poll_status(client, s.health_path, old, 401, tick=tick) == 401, (
            "old credential still accepted"
        )
        assert_json_error(
            client.post(s.health_path, health_body(), old), 401, "AuthenticationFailedException"
        )
        assert_ok(client.post(s.health_path, health_body(), new))
        tick()
        assert server.proc.pid == pid and server.proc.poll() is None, "server restarted or died"
    finally:
        watcher.close()
