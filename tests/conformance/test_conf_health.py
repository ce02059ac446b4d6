"""GET /ping and GetHealthStatus, through all three independent signers."""

from __future__ import annotations

import httpx
import pytest
from conformance_helpers import assert_json_error, assert_ok, health_body, request_metadata

STATUSES = {"ACTIVE", "DEGRADED", "UNAVAILABLE"}


def check_health_shape(doc: dict) -> None:
    """xks-spec §4 GetHealthStatus: every field present, fleet size > 0, 1..10 fleet entries."""
    assert isinstance(doc["xksProxyFleetSize"], int) and not isinstance(
        doc["xksProxyFleetSize"], bool
    )
    assert doc["xksProxyFleetSize"] > 0
    for name in ("xksProxyVendor", "xksProxyModel", "ekmVendor"):
        assert isinstance(doc[name], str) and doc[name], name
    fleet = doc["ekmFleetDetails"]
    assert isinstance(fleet, list) and 1 <= len(fleet) <= 10, fleet
    for entry in fleet:
        assert isinstance(entry["id"], str) and entry["id"]
        assert isinstance(entry["model"], str) and entry["model"]
        assert entry["healthStatus"] in STATUSES, entry


def test_ping_is_unauthenticated_200(server):
    r = httpx.get(server.base_url + "/ping", timeout=10)
    assert r.status_code == 200, r.text


def test_health_botocore(boto, stores):
    store = stores["demo"]
    doc = assert_ok(boto.post(store.health_path, health_body(), store.creds[0]))
    check_health_shape(doc)
    assert all(e["healthStatus"] == "ACTIVE" for e in doc["ekmFleetDetails"]), doc


def test_health_requests(req, stores):
    store = stores["demo"]
    check_health_shape(assert_ok(req.post(store.health_path, health_body(), store.creds[0])))


def test_health_curl(curl, stores):
    store = stores["demo"]
    check_health_shape(assert_ok(curl.post(store.health_path, health_body(), store.creds[0])))


@pytest.mark.parametrize(
    "operation",
    [
        "CreateCustomKeyStore",
        "ConnectCustomKeyStore",
        "UpdateCustomKeyStore",
        "SomeFutureKmsOperation",
    ],
)
def test_health_any_kms_operation(boto, stores, operation):
    store = stores["demo"]
    check_health_shape(
        assert_ok(boto.post(store.health_path, health_body(operation), store.creds[0]))
    )


def test_health_second_credential_and_other_stores(boto, stores):
    """Every store answers health with its own credentials, including the second demo one."""
    demo = stores["demo"]
    assert_ok(boto.post(demo.health_path, health_body(), demo.creds[1]))
    for name in ("second", "keyoff", "longprefix"):
        s = stores[name]
        check_health_shape(assert_ok(boto.post(s.health_path, health_body(), s.creds[0])))


def test_health_exempt_from_store_switch(boto, stores):
    """Config contract: enabled=false answers InvalidState for everything *except* health."""
    s = stores["storeoff"]
    check_health_shape(assert_ok(boto.post(s.health_path, health_body(), s.creds[0])))


def test_health_exempt_from_deny_rules(boto, stores):
    """xks-spec §8: health is never subject to secondary authorization."""
    s = stores["demo"]
    body = {
        "requestMetadata": request_metadata(
            "KmsHealthCheck", principal="arn:aws:iam::123456789012:role/denied", key_arn=None
        )
    }
    check_health_shape(assert_ok(boto.post(s.health_path, body, s.creds[0])))


def test_health_extra_fields_ignored(boto, stores):
    s = stores["demo"]
    body = health_body(futureField="x")
    body["futureTopLevel"] = {"nested": [1, 2]}
    check_health_shape(assert_ok(boto.post(s.health_path, body, s.creds[0])))


@pytest.mark.parametrize("drop", ["requestMetadata", "kmsRequestId", "kmsOperation"])
def test_health_missing_field_is_validation(boto, stores, drop):
    s = stores["demo"]
    body = health_body()
    if drop == "requestMetadata":
        del body["requestMetadata"]
    else:
        del body["requestMetadata"][drop]
    doc = assert_json_error(boto.post(s.health_path, body, s.creds[0]), 400, "ValidationException")
    assert drop in doc.get("errorMessage", ""), doc


def test_health_empty_body_is_validation(boto, stores):
    s = stores["demo"]
    assert_json_error(boto.post(s.health_path, b"", s.creds[0]), 400, "ValidationException")
