"""Cedar policies through a real server: real SoftHSMv2, real sockets, three independent signers.

One module-scoped ``xksproxy serve`` (embedded default from ``xksproxy init``) with three key
stores:

- ``demo``: the matrix policy below (principal x operation x key x VPC);
- ``locked``: a forbid-all policy — GetHealthStatus must still answer 200;
- ``reloadable``: its policy file is rewritten by the reload test (nobody else uses it).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator

import pytest
from conformance_helpers import (
    BotocoreClient,
    CurlClient,
    RequestsClient,
    Store,
    decrypt_body,
    encrypt_body,
    health_body,
    metadata_body,
    rid,
)
from server_harness import StateDir, init_state, set_option, start_server, store_toml

APP = "arn:aws:iam::111122223333:role/App"
READER = "arn:aws:iam::111122223333:role/Reader"
STRANGER = "arn:aws:iam::444455556666:user/mallory"
GOOD_VPC = "vpc-0good"

MATRIX_POLICY = f"""
// The matrix test's policy: App may do everything, Reader only read and decrypt; the demo key
// only from the bank's VPC.
@id("permit-app")
permit (principal == Xks::Principal::"{APP}", action, resource);

@id("permit-reader")
permit (
  principal == Xks::Principal::"{READER}",
  action in [Xks::Action::"Decrypt", Xks::Action::"GetKeyMetadata"],
  resource
);

@id("demo-key-only-from-good-vpc")
forbid (principal, action, resource == Xks::Key::"demo")
when {{ context.awsSourceVpc != "{GOOD_VPC}" }};

@id("no-frankfurt")
forbid (principal, action, resource) when {{ context.region == "eu-central-1" }};
"""

FORBID_ALL = '@id("forbid-all")\nforbid (principal, action, resource);\n'
PERMIT_ALL = '@id("permit-all")\npermit (principal, action, resource);\n'


def expected_denial(principal: str, operation: str, key: str, vpc: str | None) -> str | None:
    """What MATRIX_POLICY decides, written out by hand: None = allowed, else the deciding id."""
    if key == "demo" and vpc != GOOD_VPC:
        return "demo-key-only-from-good-vpc"
    if principal == APP or (principal == READER and operation != "encrypt"):
        return None
    return "default-deny"


class Live:
    def __init__(self, state: StateDir, server, stores: dict[str, Store]) -> None:
        self.state, self.server, self.stores = state, server, stores
        self.clients = [
            BotocoreClient(server.base_url),
            RequestsClient(server.base_url, server.host),
            CurlClient(server.base_url),
        ]
        self.policies = state.path / "policies"

    def request_log(self, kms_request_id: str, timeout: float = 10.0) -> dict:
        """The server's request-log record for ``kms_request_id`` (stdout JSON lines)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.server.log_text().splitlines():
                if kms_request_id in line and '"log":"request"' in line:
                    return json.loads(line)
            time.sleep(0.05)
        raise AssertionError(f"no request-log line for {kms_request_id}")

    def audit_record(self, kms_request_id: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for f in sorted((self.state.path / "audit").glob("*.log")):
                for line in f.read_text(errors="replace").splitlines():
                    if kms_request_id in line:
                        return json.loads(line)
            time.sleep(0.05)
        raise AssertionError(f"no audit record for {kms_request_id}")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    state = init_state(tmp_path_factory.mktemp("cedar") / "state")
    policies = state.path / "policies"
    policies.mkdir()
    (policies / "matrix.cedar").write_text(MATRIX_POLICY)
    (policies / "locked.cedar").write_text(FORBID_ALL + PERMIT_ALL)
    (policies / "reloadable.cedar").write_text(FORBID_ALL + PERMIT_ALL)
    text = set_option(state.config.read_text(), "keystore", "policy", '"policies/matrix.cedar"')
    text = set_option(text, "keystore", "keys", '["demo", "demo-encrypt-only"]')
    locked, locked_store = store_toml(
        state, "locked", "/locked", 'policy = "policies/locked.cedar"'
    )
    reload_text, reload_store = store_toml(
        state, "reloadable", "/reloadable", 'policy = "policies/reloadable.cedar"'
    )
    state.config.write_text(text + locked + reload_text)
    server = start_server(state, log_name="cedar")
    live = Live(
        state, server, {"demo": state.demo, "locked": locked_store, "reloadable": reload_store}
    )
    try:
        yield live
    finally:
        for c in live.clients:
            if hasattr(c, "close"):
                c.close()
        server.stop()


@pytest.fixture(scope="module")
def sealed(live: Live) -> dict:
    """One ciphertext under the demo key, made by a caller the policy allows."""
    demo = live.stores["demo"]
    body = encrypt_body(b"matrix plaintext", principal=APP, awsSourceVpc=GOOD_VPC)
    reply = live.clients[0].post(demo.key_path("demo", "encrypt"), body, demo.creds[0])
    assert reply.status == 200, reply.describe()
    return reply.json()


MATRIX = list(
    itertools.product(
        (APP, READER, STRANGER),
        ("metadata", "encrypt", "decrypt"),
        ("demo", "demo-encrypt-only"),
        (GOOD_VPC, "vpc-0bad", None),
    )
)


@pytest.mark.parametrize(("principal", "operation", "key", "vpc"), MATRIX)
def test_cedar_matrix(live, sealed, principal, operation, key, vpc):
    demo = live.stores["demo"]
    kw = {"principal": principal, "awsSourceVpc": vpc, "request_id": rid()}
    if operation == "metadata":
        body = metadata_body(**kw)
    elif operation == "encrypt":
        body = encrypt_body(b"matrix plaintext", **kw)
    else:
        body = decrypt_body(sealed, **kw)
    client = live.clients[MATRIX.index((principal, operation, key, vpc)) % len(live.clients)]
    reply = client.post(demo.key_path(key, operation), body, demo.creds[0])
    denial = expected_denial(principal, operation, key, vpc)
    if denial is None:
        assert reply.status != 403, reply.describe()
        if key == "demo":
            assert reply.status == 200, reply.describe()
        return
    assert reply.status == 403, reply.describe()
    error = reply.json()
    assert error["errorName"] == "AccessDeniedException"
    assert denial not in reply.body.decode() and "permit" not in reply.body.decode()
    record = live.request_log(kw["request_id"])
    assert record["denyRule"] == denial and record["outcome"] == "AccessDeniedException"


@pytest.mark.parametrize("client_index", [0, 1, 2])
def test_region_of_the_sigv4_scope_is_in_the_context(live, client_index):
    demo = live.stores["demo"]
    client = live.clients[client_index]
    path = demo.key_path("demo", "metadata")
    ok = client.post(path, metadata_body(principal=APP, awsSourceVpc=GOOD_VPC), demo.creds[0])
    assert ok.status == 200, ok.describe()
    request_id = rid()
    body = metadata_body(principal=APP, awsSourceVpc=GOOD_VPC, request_id=request_id)
    denied = client.post(path, body, demo.creds[0], region="eu-central-1")
    assert denied.status == 403, denied.describe()
    assert live.request_log(request_id)["denyRule"] == "no-frankfurt"


def test_audit_log_names_the_deciding_policy(live):
    demo = live.stores["demo"]
    request_id = rid()
    body = encrypt_body(b"x", principal=STRANGER, request_id=request_id, awsSourceVpc=GOOD_VPC)
    reply = live.clients[1].post(demo.key_path("demo", "encrypt"), body, demo.creds[0])
    assert reply.status == 403
    record = live.audit_record(request_id)
    assert record["denyRule"] == "default-deny" and record["errorName"] == "AccessDeniedException"


@pytest.mark.parametrize("client_index", [0, 1, 2])
def test_health_is_never_subject_to_policy(live, client_index):
    locked = live.stores["locked"]
    client = live.clients[client_index]
    reply = client.post(locked.health_path, health_body(), locked.creds[0])
    assert reply.status == 200, reply.describe()
    denied = client.post(
        locked.key_path("demo", "metadata"), metadata_body(principal=APP), locked.creds[0]
    )
    assert denied.status == 403 and denied.json()["errorName"] == "AccessDeniedException"


def test_unknown_key_is_404_before_policy(live):
    locked = live.stores["locked"]
    reply = live.clients[0].post(
        locked.key_path("not-a-key", "encrypt"), encrypt_body(b"x"), locked.creds[0]
    )
    assert reply.status == 404 and reply.json()["errorName"] == "KeyNotFoundException"


def test_changed_policy_file_is_reloaded_and_the_cache_emptied(live):
    store = live.stores["reloadable"]
    path = live.policies / "reloadable.cedar"
    client = live.clients[0]

    def ask() -> int:
        body = metadata_body(principal=APP, request_id="same-attributes-every-time")
        return client.post(store.key_path("demo", "metadata"), body, store.creds[0]).status

    assert ask() == 403 and ask() == 403  # the second answer comes from the decision cache
    try:
        path.write_text(PERMIT_ALL)  # same request attributes: only a fresh cache can allow it
        deadline = time.monotonic() + 15
        while ask() != 200:
            assert time.monotonic() < deadline, "the changed policy was not picked up"
            time.sleep(0.2)
        # An invalid policy is refused by the reload; the last good one stays in force.
        path.write_text("permit (principal, action, resource) when { context.nope };\n")
        marker = "configuration reload refused"
        deadline = time.monotonic() + 15
        while marker not in live.server.log_text():
            assert time.monotonic() < deadline, "the invalid policy was not refused"
            time.sleep(0.2)
        assert "reloadable.cedar:1" in live.server.log_text()
        assert ask() == 200
    finally:
        path.write_text(FORBID_ALL + PERMIT_ALL)
