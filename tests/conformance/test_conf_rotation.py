"""SigV4 credential rotation on a running proxy (xks-spec §6: at least two credentials at once;
changes apply without a restart). Driven through the stable CLI (`credentials add/remove`)."""

from __future__ import annotations

import json
import time

import pytest
from conformance_helpers import BotocoreClient, Cred, assert_json_error, assert_ok, health_body
from server_harness import run_cli


def poll_status(client, path, cred, want: int, tries: int = 75) -> int:
    """Health status with ``cred`` until it is ``want`` (bounded: ~15 s); returns the last one."""
    status = -1
    for _ in range(tries):
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
    done = run_cli("credentials", "add", "--config", str(server.config_path), "--keystore",
                   s.prefix)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    cred_doc = doc.get("XksProxyAuthenticationCredential", doc)
    new = Cred(cred_doc["AccessKeyId"], cred_doc["RawSecretAccessKey"])
    state.secrets_used.append(new.secret)
    pid = server.proc.pid

    assert poll_status(client, s.health_path, new, 200) == 200, "new credential never accepted"
    assert_ok(client.post(s.health_path, health_body(), old))  # both valid during rotation

    done = run_cli("credentials", "remove", "--config", str(server.config_path), "--keystore",
                   s.prefix, old.akid)
    assert done.returncode == 0, done.stderr
    assert poll_status(client, s.health_path, old, 401) == 401, "old credential still accepted"
    assert_json_error(client.post(s.health_path, health_body(), old), 401,
                      "AuthenticationFailedException")
    assert_ok(client.post(s.health_path, health_body(), new))
    assert server.proc.pid == pid and server.proc.poll() is None, "server restarted or died"
