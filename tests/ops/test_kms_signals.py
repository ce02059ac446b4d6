"""Certificate expiry and credential age gauges (xksproxy.observe.metrics.kms_signals)."""

from __future__ import annotations

import os
import time

from xksproxy.observe.metrics.kms_signals import CertificateExpiry, CredentialAge
from xksproxy.runtime.tls import generate_self_signed


def test_certificate_expiry_follows_the_file(tmp_path):
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    generate_self_signed(cert, key, ["localhost"])
    gauge = CertificateExpiry(cert)
    left = gauge.seconds_left()
    assert left is not None and left > 86400
    assert gauge.seconds_left(now=time.time() + left + 10) < 0  # expired: negative, not absent
    cert.unlink()
    assert gauge.seconds_left() is None  # no file: no series (not a made-up value)
    cert.write_text("not a certificate")
    assert gauge.seconds_left() is None


def test_credential_age_is_the_newest_secret_files_age(tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    old, new = secrets / "a-1.secret", secrets / "a-2.secret"
    for p in (old, new):
        p.write_text("x" * 40)
    now = time.time()
    os.utime(old, (now - 1000, now - 1000))
    os.utime(new, (now - 100, now - 100))
    config = tmp_path / "xksproxy.toml"
    config.write_text(
        '[[keystore]]\nname = "a"\n'
        '[[keystore.credentials]]\naccess_key_id = "A1"\nsecret = "file:secrets/a-1.secret"\n'
        '[[keystore.credentials]]\naccess_key_id = "A2"\nsecret = "file:secrets/a-2.secret"\n'
        '[[keystore]]\nname = "b"\n'
        '[[keystore.credentials]]\naccess_key_id = "B1"\nsecret = "env:B_SECRET"\n'
    )
    ages = CredentialAge(config).ages(now=now)
    assert set(ages) == {"a"}  # env: secrets have no creation time: no series for b
    assert 99 <= ages["a"] <= 101
    # Removing the newest credential from the file is seen at the next scrape.
    config.write_text(config.read_text().replace('secret = "file:secrets/a-2.secret"',
                                                 'secret = "env:A2_SECRET"'))  # fmt: skip
    os.utime(config, (now + 5, now + 5))
    assert 999 <= CredentialAge(config).ages(now=now)["a"] <= 1001
