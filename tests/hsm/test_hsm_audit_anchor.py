"""hsm.audit_anchor on the real SoftHSMv2 token: CKM_SHA256_HMAC with a generic secret key
generated inside the HSM (sensitive, not extractable), and checkpoints as CKO_DATA objects."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from pkcs11 import Attribute, KeyType, ObjectClass

from hsm import audit_anchor
from hsm.admin import _session, list_keys

LABEL = "test-audit-anchor"


@pytest.fixture(scope="module")
def anchored(hsm_config):
    audit_anchor.ensure_key(hsm_config, LABEL)
    return hsm_config


def test_key_is_generated_inside_sensitive_and_not_extractable(anchored):
    assert audit_anchor.ensure_key(anchored, LABEL) is False  # idempotent
    assert audit_anchor.key_exists(anchored, LABEL)
    with _session(anchored) as (_mod, session):
        (key,) = session.get_objects(
            {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: LABEL}
        )
        assert key[Attribute.KEY_TYPE] == KeyType.GENERIC_SECRET
        assert key[Attribute.SENSITIVE] and not key[Attribute.EXTRACTABLE]
        assert key[Attribute.NEVER_EXTRACTABLE] and key[Attribute.LOCAL]  # generated inside
        assert not key[Attribute.ENCRYPT] and not key[Attribute.DECRYPT]
    # not an AES data key: `keys list` does not offer it to a key store
    assert LABEL not in {k.label for k in list_keys(anchored)}


def test_softhsm_does_sha256_hmac_with_the_generic_secret(anchored):
    a = audit_anchor.hmac_sha256(anchored, b"payload-1", LABEL)
    assert len(a) == 32
    assert audit_anchor.hmac_sha256(anchored, b"payload-1", LABEL) == a  # deterministic
    assert audit_anchor.hmac_sha256(anchored, b"payload-2", LABEL) != a
    # an HMAC, not a plain hash
    assert a != hashlib.sha256(b"payload-1").digest()
    assert not hmac.compare_digest(a, hmac.digest(b"\0" * 32, b"payload-1", "sha256"))


def test_checkpoints_are_signed_and_the_newest_few_kept(anchored):
    for seq in range(1, 7):
        audit_anchor.write_checkpoint(anchored, f"cp|{seq:020d}".encode(), LABEL)
    got = audit_anchor.read_checkpoints(anchored, LABEL)
    assert len(got) == audit_anchor.KEEP_CHECKPOINTS
    assert all(good for _, good in got)
    assert got[-1][0] == f"cp|{6:020d}".encode()
    # a checkpoint whose value was changed on the token no longer verifies
    with _session(anchored) as (_mod, session):
        objs = list(
            session.get_objects(
                {Attribute.CLASS: ObjectClass.DATA, Attribute.APPLICATION: audit_anchor.APPLICATION}
            )
        )
        forged = f"cp|{99:020d}".encode() + b"\0" * 32
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.APPLICATION: audit_anchor.APPLICATION,
                Attribute.VALUE: forged,
            }
        )
        assert len(objs) == audit_anchor.KEEP_CHECKPOINTS
    got = audit_anchor.read_checkpoints(anchored, LABEL)
    assert got[-1] == (f"cp|{99:020d}".encode(), False)
