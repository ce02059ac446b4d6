"""Credential shapes from the XKS spec: validators the config loader relies on, generation, and
that a credential never shows its secret."""

import pytest

from sigv4 import Credential, generate_credential, validate_access_key_id, validate_secret


@pytest.mark.parametrize("akid", ["A" * 20, "Z7" * 15, "ABCDEFGHIJKLMNOPQRSTUVWXYZ2345"])
def test_valid_access_key_ids(akid):
    validate_access_key_id(akid)


@pytest.mark.parametrize(
    ("akid", "fragment"),
    [
        ("A" * 19, "got 19"),
        ("A" * 31, "got 31"),
        ("", "got 0"),
        ("A" * 19 + "1", "character 20"),
        ("A" * 19 + "8", "character 20"),
        ("a" + "A" * 19, "character 1"),
        ("AAAA-AAAAAAAAAAAAAAAA", "character 5"),
    ],
)
def test_invalid_access_key_ids_say_what_is_wrong(akid, fragment):
    with pytest.raises(ValueError, match="access key id") as exc:
        validate_access_key_id(akid)
    assert fragment in str(exc.value)


@pytest.mark.parametrize("secret", ["a" * 43, "Zz09+/=" * 9 + "A", "x" * 64])
def test_valid_secrets(secret):
    validate_secret(secret)


@pytest.mark.parametrize(
    ("secret", "fragment"),
    [
        ("a" * 42, "got 42"),
        ("a" * 65, "got 65"),
        ("a" * 42 + "-", "character 43"),
        ("a" * 42 + "_", "character 43"),
        ("\u00e9" + "a" * 42, "character 1"),
    ],
)
def test_invalid_secrets_never_echo_the_secret(secret, fragment):
    with pytest.raises(ValueError, match="secret") as exc:
        validate_secret(secret)
    assert fragment in str(exc.value)
    assert secret not in str(exc.value)
    assert secret[-10:] not in str(exc.value)


def test_validators_reject_non_strings():
    with pytest.raises(ValueError):
        validate_access_key_id(b"A" * 20)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        validate_secret(None)  # type: ignore[arg-type]


def test_generated_credentials_are_valid_and_distinct():
    creds = [generate_credential() for _ in range(50)]
    for c in creds:
        validate_access_key_id(c.access_key_id)
        validate_secret(c.secret)
    assert len({c.access_key_id for c in creds}) == 50
    assert len({c.secret for c in creds}) == 50


def test_credential_repr_and_str_hide_the_secret():
    c = generate_credential()
    for text in (repr(c), str(c), f"{c}", repr([c]), repr({"k": c})):
        assert c.secret not in text
        assert c.access_key_id in text


def test_credentials_compare_by_value():
    assert Credential("A" * 20, "s" * 43) == Credential("A" * 20, "s" * 43)
    assert Credential("A" * 20, "s" * 43) != Credential("A" * 20, "t" * 43)
