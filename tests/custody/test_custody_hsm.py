"""hsm.custody on SoftHSMv2: the companion object is created, replaced, read by the
pool, listed and destroyed; version keys get version 0's template."""

from __future__ import annotations

import time

import pytest

from hsm import admin, custody
from hsm.pool import HsmPool

LABEL = "custody-doc-unit"


@pytest.fixture
def key(hsm_config):
    admin.create_key(hsm_config, LABEL, "decrypt")
    try:
        yield LABEL
    finally:
        custody.delete_document(hsm_config, LABEL)
        custody.destroy_keys(hsm_config, [LABEL, f"{LABEL}#v1"])


async def test_document_lifecycle_on_the_token(hsm_config, key):
    assert custody.read_document(hsm_config, key) is None
    assert custody.write_document(hsm_config, key, b'{"n":1}') == "created"
    # SoftHSMv2 refuses C_SetAttributeValue on a data object's CKA_VALUE (read-only after
    # creation), so the document is replaced by create-new-then-destroy-old
    assert custody.write_document(hsm_config, key, b'{"n":2}') == "replaced"
    assert len(custody.list_documents(hsm_config)) >= 1
    assert custody.read_document(hsm_config, key) == b'{"n":2}'
    assert custody.list_documents(hsm_config)[key] == b'{"n":2}'

    pool = HsmPool(hsm_config)
    await pool.start()
    try:
        deadline = time.monotonic() + 5
        assert await pool.custody(key, deadline=deadline) == b'{"n":2}'
        assert await pool.custody("no-such-key", deadline=deadline) is None
        custody.write_document(hsm_config, key, b'{"n":3}')
        assert await pool.custody(key, deadline=deadline) == b'{"n":3}'  # never cached here
    finally:
        await pool.close()

    # the companion object is not a key: key listings and key lookups do not see it
    assert [k.label for k in admin.list_keys(hsm_config)].count(key) == 1
    assert custody.delete_document(hsm_config, key) is True
    assert custody.read_document(hsm_config, key) is None


def test_a_version_key_has_the_template_of_version_0(hsm_config, key):
    info = custody.create_version_key(hsm_config, f"{key}#v1", like=key)
    assert info.usage == frozenset({"DECRYPT"})
    assert custody.key_info(hsm_config, f"{key}#v1").usage == frozenset({"DECRYPT"})
    assert custody.destroy_keys(hsm_config, [f"{key}#v1", f"{key}#v7"]) == [f"{key}#v1"]


def test_keys_delete_also_forgets_versions_and_state(hsm_config):
    from xksproxy.admin.custody_ops import forget
    from xksproxy.keys.custody_doc import CustodyDocument, Version

    label = "custody-forget"
    admin.create_key(hsm_config, label)
    custody.create_version_key(hsm_config, f"{label}#v1", like=label)
    versions = (Version(0, None, "retired"), Version(1, None, "active"))
    custody.write_document(
        hsm_config, label, CustodyDocument(key=label, versions=versions).to_bytes()
    )
    admin.delete_key(hsm_config, label)  # what `keys delete` does first
    assert forget(hsm_config, label) == [f"{label}#v1"]
    assert custody.read_document(hsm_config, label) is None
    assert not [k for k in admin.list_keys(hsm_config) if k.label.startswith(label)]
