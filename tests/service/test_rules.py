"""Pure rules: error bodies, key store resolution, health status."""

import orjson
import pytest
from service_helpers import AKID, write_config

from xksproxy.config import HealthConfig, load_config
from xksproxy.keys.health import HealthMonitor, ProbeRecord
from xksproxy.keys.keystores import KeyStoreTable
from xksproxy.keys.resolver import KeyRef
from xksproxy.xks import errors, operations


def test_error_messages_are_sanitised_and_bounded():
    err = errors.ValidationException("bad\x00field\n" + "x" * 2000 + "é")
    doc = orjson.loads(err.body())
    assert doc["errorName"] == "ValidationException" and err.status == 400
    assert len(doc["errorMessage"]) < 512
    assert all(" " <= c <= "~" for c in doc["errorMessage"])


@pytest.mark.parametrize(
    "cls,status,name",
    [
        (errors.InvalidStateException, 400, "InvalidStateException"),
        (errors.InvalidCiphertextException, 400, "InvalidCiphertextException"),
        (errors.InvalidKeyUsageException, 400, "InvalidKeyUsageException"),
        (errors.AuthenticationFailedException, 401, "AuthenticationFailedException"),
        (errors.AccessDeniedException, 403, "AccessDeniedException"),
        (errors.KeyNotFoundException, 404, "KeyNotFoundException"),
        (errors.InvalidUriPathException, 404, "InvalidUriPathException"),
        (errors.ThrottlingException, 429, "ThrottlingException"),
        (errors.UnsupportedOperationException, 501, "UnsupportedOperationException"),
        (errors.DependencyTimeoutException, 503, "DependencyTimeoutException"),
        (errors.InternalException, 500, "InternalException"),
    ],
)
def test_error_table(cls, status, name):
    err = cls()
    assert (err.status, orjson.loads(err.body())["errorName"]) == (status, name)


def test_domain_errors_map_in_one_place():
    import sigv4
    from hsm import errors as h

    cases = [
        (sigv4.SignatureMismatch(), 401, "AuthenticationFailedException"),
        (sigv4.RequestExpired(), 401, "AuthenticationFailedException"),
        (h.KeyNotFound("k"), 404, "KeyNotFoundException"),
        (h.KeyUsageNotPermitted("k"), 400, "InvalidKeyUsageException"),
        (h.InvalidCiphertext("k"), 400, "InvalidCiphertextException"),
        (h.SessionTimeout("k"), 503, "DependencyTimeoutException"),
        (h.HsmUnavailable("k"), 500, "InternalException"),
        (h.HsmFailure("CKR_DEVICE_ERROR detail"), 500, "InternalException"),
    ]
    for exc, status, name in cases:
        mapped = errors.to_xks_error(exc)
        assert (mapped.status, mapped.error_name) == (status, name), exc
    assert "CKR_DEVICE_ERROR" not in errors.to_xks_error(cases[-1][0]).message
    assert errors.to_xks_error(RuntimeError("x")) is None


@pytest.fixture
def table(tmp_path):
    stores = f'''
[[keystore]]
name = "a"
path_prefix = ""
keys = ["k1", "k2"]
disabled_keys = ["k2"]
[keystore.key_labels]
k1 = "label-one"
[[keystore.credentials]]
access_key_id = "{AKID}"
secret = "file:secrets/demo-1.secret"
[[keystore.credentials]]
access_key_id = "AKIAROTATEDKEY234567"
secret = "file:secrets/other.secret"

[[keystore]]
name = "b"
path_prefix = "/b"
keys = ["*"]
enabled = false
[[keystore.credentials]]
access_key_id = "AKIAROTATEDKEY234567"
secret = "file:secrets/demo-1.secret"
'''
    return KeyStoreTable(load_config(write_config(tmp_path, keystores=stores), env={}))


def test_key_store_lookup(table):
    a = table.for_base_path("/kms/xks/v1")
    b = table.for_base_path("/b/kms/xks/v1")
    assert a.name == "a" and b.name == "b" and table.for_base_path("/c/kms/xks/v1") is None
    assert [c.access_key_id for c in a.lookup(AKID)] == [AKID]
    assert len(a.lookup("AKIAROTATEDKEY234567")) == 1  # two credentials at once (rotation)
    assert a.lookup("AKIAUNKNOWNKEY234567") == ()
    assert b.lookup(AKID) == ()  # another store's credential


def test_key_resolution(table):
    a = table.for_base_path("/kms/xks/v1")
    b = table.for_base_path("/b/kms/xks/v1")
    k1 = a.resolver.resolve("k1", operations.ENCRYPT)
    assert k1 == KeyRef("a", "k1", "softhsm-0", "label-one", 0, "ENABLED")
    assert a.resolver.resolve("k2", operations.METADATA).label == "k2"
    with pytest.raises(errors.KeyNotFoundException):
        a.resolver.resolve("k3", operations.METADATA)
    # a disabled key may be described, not used
    assert a.resolver.resolve("k2", operations.METADATA).status == "DISABLED"
    for op in (operations.ENCRYPT, operations.DECRYPT):
        with pytest.raises(errors.InvalidStateException):
            a.resolver.resolve("k2", op)
    with pytest.raises(errors.KeyNotFoundException):  # unknown before disabled
        a.resolver.resolve("k3", operations.ENCRYPT)
    assert a.resolver.resolve("k1", operations.DECRYPT, version=0).version == 0
    a.check_enabled()
    assert b.resolver.resolve("anything", operations.ENCRYPT).label == "anything"
    with pytest.raises(errors.KeyNotFoundException):
        b.resolver.resolve("xks-health-test", operations.METADATA)  # "*" never admits it
    with pytest.raises(errors.InvalidStateException):
        b.check_enabled()


def test_key_ref_is_frozen_and_slotted():
    ref = KeyRef("s", "k", "b", "l")
    assert not hasattr(ref, "__dict__") and ref.enabled and ref.version == 0
    with pytest.raises(AttributeError):
        ref.label = "other"  # type: ignore[misc]  # frozen: the point of the test


# The deny rules' semantics (and their Cedar translation) are tested in
# tests/policy/test_deny_translation.py.


class FakeStats:
    def __init__(self, state):
        self.state = state


class FakePool:
    """Only what HealthMonitor.status reads; probing itself is covered by test_app."""

    def __init__(self, state="ready"):
        self._state = state

    def stats(self):
        return FakeStats(self._state)


def test_health_status_rules():
    cfg = HealthConfig(degraded_ms=100)
    pools = {
        "ok": FakePool(),
        "slow": FakePool(),
        "rec": FakePool("recovering"),
        "down": FakePool(),
        "old": FakePool(),
        "never": FakePool(),
    }
    mon = HealthMonitor(cfg, pools, {"ok": "Model X"})
    now = 1000.0
    mon._records.update(
        {
            "ok": ProbeRecord(True, 0.001, now),
            "slow": ProbeRecord(True, 0.5, now),
            "rec": ProbeRecord(True, 0.001, now),
            "down": ProbeRecord(False, 0.001, now),
            "old": ProbeRecord(True, 0.001, now - 61),
        }
    )
    got = {name: mon.status(name, now=now) for name in pools}
    assert got == {
        "ok": "ACTIVE",
        "slow": "DEGRADED",
        "rec": "DEGRADED",
        "down": "UNAVAILABLE",
        "old": "UNAVAILABLE",
        "never": "UNAVAILABLE",
    }
    answer = mon.answer(["ok"])
    assert answer["ekmFleetDetails"][0]["model"] == "Model X"
    assert answer["xksProxyFleetSize"] == 1
