"""HSM AAD framing, ciphertextMetadata format and the CDIV (spec test vector)."""

import base64

import pytest

from xksproxy.xks import framing
from xksproxy.xks.errors import InvalidCiphertextException


def test_cdiv_matches_the_public_spec_vector():
    value = framing.cdiv(
        aad=b"project=nile,department=marketing",
        metadata=b"key_version=1",
        iv=base64.b64decode("HMrlRw85cAJUd5Ax"),
        ciphertext=base64.b64decode("ghxkK1txeDNn3q8Y"),
        tag=base64.b64decode("vBxN2ncH1oEkR8WVXpmyYQ=="),
    )
    assert value == "qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc="


def test_cdiv_treats_absent_fields_as_empty():
    args = dict(iv=b"i" * 12, ciphertext=b"c", tag=b"t" * 16)
    assert framing.cdiv(aad=None, metadata=None, **args) == framing.cdiv(
        aad=b"", metadata=b"", **args
    )


def test_hsm_aad_carries_explicit_lengths():
    assert framing.hsm_aad(b"ab", b"\x01\x00") == b"\x00\x02ab\x02\x01\x00"
    assert framing.hsm_aad(None, None) == b"\x00\x00\x00"
    # moving metadata bytes into the AAD changes the framed value
    assert framing.hsm_aad(b"\x01\x00", None) != framing.hsm_aad(None, b"\x01\x00")


def test_hsm_aad_accepts_the_largest_aad():
    assert len(framing.hsm_aad(b"x" * 65535, None)) == 65535 + 3


def test_current_metadata_is_versioned_and_parses():
    info = framing.parse_metadata(framing.CURRENT_METADATA)
    assert info is not None and info.format == 1 and info.key_version == 0
    assert len(framing.CURRENT_METADATA) <= 20
    assert framing.parse_metadata(None) is None


@pytest.mark.parametrize("meta", [b"", b"\x02\x00", b"\x01", b"\x01\x00\x00", b"key_version=1"])
def test_foreign_or_changed_metadata_is_invalid_ciphertext(meta):
    with pytest.raises(InvalidCiphertextException):
        framing.parse_metadata(meta)
