"""The resolver's lifecycle cache: at most ``ttl_s`` old, one HSM read per key per period, a
failed read keeps the previous document briefly, ids naming version objects are refused."""

from __future__ import annotations

import pytest

from hsm.errors import HsmFailure
from xksproxy.config import KeystoreConfig
from xksproxy.keys.custody_doc import CustodyDocument
from xksproxy.keys.resolver import KeyResolver, version_label
from xksproxy.xks import operations
from xksproxy.xks.errors import (
    InvalidCiphertextException,
    InvalidStateException,
    KeyNotFoundException,
)

STORE = KeystoreConfig(
    name="s", path_prefix="/s", hsm="h", regions=frozenset(), keys=frozenset({"k", "*"}),
    key_labels={"mapped": "x#v1"}, quota_rate=0, quota_burst=0, disabled_keys=frozenset(),
    enabled=True, deny=[], credentials=[],
)  # fmt: skip


class Source:
    def __init__(self) -> None:
        self.doc: bytes | None = None
        self.reads = 0
        self.error: Exception | None = None

    async def __call__(self, backend: str, label: str, deadline: float) -> bytes | None:
        self.reads += 1
        if self.error is not None:
            raise self.error
        return self.doc


@pytest.fixture
def clock():
    return [100.0]


@pytest.fixture
def source():
    return Source()


@pytest.fixture
def resolver(source, clock):
    return KeyResolver(STORE, {"h": "health"}, source, ttl_s=5.0, clock=lambda: clock[0])


async def lookup(resolver, op=operations.ENCRYPT):
    return await resolver.lookup("k", op, deadline=1e12)


async def test_state_is_cached_for_at_most_the_ttl(resolver, source, clock):
    assert (await lookup(resolver)).state == "active"
    source.doc = CustodyDocument(key="k", state="suspended").to_bytes()
    clock[0] += 4.9
    assert (await lookup(resolver)).state == "active"  # still cached
    assert source.reads == 1
    clock[0] += 0.2
    with pytest.raises(InvalidStateException):
        await lookup(resolver)
    assert source.reads == 2


async def test_a_failed_read_keeps_the_previous_document_for_one_more_ttl(resolver, source, clock):
    await lookup(resolver)
    source.error = HsmFailure("two custody objects for a moment")
    clock[0] += 6
    assert (await lookup(resolver)).state == "active"
    clock[0] += 5
    with pytest.raises(HsmFailure):
        await lookup(resolver)


def test_the_ttl_is_at_most_5_s():
    with pytest.raises(ValueError):
        KeyResolver(STORE, {"h": "health"}, None, ttl_s=5.1)


async def test_ids_or_labels_naming_version_objects_are_not_found(resolver, source):
    for key_id in ("k#v1", "mapped"):
        with pytest.raises(KeyNotFoundException):
            await resolver.lookup(key_id, operations.METADATA, deadline=1e12)
    assert source.reads == 0
    assert version_label("k", 0) == "k" and version_label("k", 3) == "k#v3"


async def test_decrypt_with_a_version_not_yet_seen_rereads_once(resolver, source, clock):
    from xksproxy.keys.custody_doc import Version

    await lookup(resolver, operations.DECRYPT)  # caches "version 0 only"
    # another worker rotated: its ciphertext names version 1 before our cache expired
    versions = (Version(0, None, "retired"), Version(1, None))
    source.doc = CustodyDocument(key="k", versions=versions).to_bytes()
    clock[0] += 1
    ref = await resolver.lookup("k", operations.DECRYPT, version=1, deadline=1e12)
    assert (ref.version, ref.label) == (1, "k#v1")
    assert source.reads == 2
    # a version that does not exist is refused; a re-read happens at most every 0.5 s
    for _ in range(3):
        with pytest.raises(InvalidCiphertextException):
            await resolver.lookup("k", operations.DECRYPT, version=9, deadline=1e12)
    assert source.reads == 2
    clock[0] += 0.6
    with pytest.raises(InvalidCiphertextException):
        await resolver.lookup("k", operations.DECRYPT, version=9, deadline=1e12)
    assert source.reads == 3
