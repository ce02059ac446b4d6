"""Envelope encryption end to end: AWS Encryption SDK and AWS CLI → emulator → proxy → HSM.

Neither tool knows it is not talking to KMS: the Encryption SDK gets a botocore session whose
KMS endpoint comes from ``AWS_ENDPOINT_URL_KMS``, the CLI gets ``--endpoint-url``.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aws_encryption_sdk
import botocore.session
import pytest
from aws_encryption_sdk import CommitmentPolicy
from kmsemu_harness import Emulator


def aws_env(emulator: Emulator, tmp_path: Path) -> dict[str, str]:
    """Only the emulator's credentials and endpoint: no user config or profile can leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=emulator.credentials["AccessKeyId"],
        AWS_SECRET_ACCESS_KEY=emulator.credentials["SecretAccessKey"],
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL_KMS=emulator.url,
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def test_encryption_sdk_round_trip_of_a_file(
    emulator: Emulator, xks_key: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in aws_env(emulator, tmp_path).items():
        monkeypatch.setenv(name, value)
    source = tmp_path / "report.bin"
    source.write_bytes(os.urandom(200_000))
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    provider = aws_encryption_sdk.StrictAwsKmsMasterKeyProvider(
        key_ids=[xks_key["Arn"]], botocore_session=botocore.session.Session()
    )
    sealed = tmp_path / "report.bin.encrypted"
    with source.open("rb") as src, sealed.open("wb") as dst:
        with client.stream(
            mode="e", source=src, key_provider=provider, encryption_context={"file": "report"}
        ) as enc:
            for chunk in enc:
                dst.write(chunk)
    assert sealed.stat().st_size > source.stat().st_size
    with sealed.open("rb") as src:
        plaintext, header = client.decrypt(source=src.read(), key_provider=provider)
    assert plaintext == source.read_bytes()
    assert header.encryption_context["file"] == "report"
    assert [k.key_provider.key_info.decode() for k in header.encrypted_data_keys] == [
        xks_key["Arn"]
    ]


def test_aws_cli_round_trip(emulator: Emulator, xks_key: dict[str, Any], tmp_path: Path) -> None:
    aws = Path(sys.executable).with_name("aws")
    if not aws.exists():
        pytest.skip("the AWS CLI (PyPI awscli, in the test extra) is not installed")
    env = aws_env(emulator, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"the eagle lands at noon\n")

    def aws_kms(*args: str) -> str:
        done = subprocess.run(
            [str(aws), "kms", *args, "--endpoint-url", emulator.url, "--output", "text"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    blob_b64 = aws_kms(
        "encrypt",
        "--key-id",
        xks_key["Arn"],
        "--plaintext",
        f"fileb://{secret}",
        "--encryption-context",
        "purpose=cli",
        "--query",
        "CiphertextBlob",
    )
    blob = tmp_path / "secret.kms"
    blob.write_bytes(base64.b64decode(blob_b64))
    plain_b64 = aws_kms(
        "decrypt",
        "--ciphertext-blob",
        f"fileb://{blob}",
        "--encryption-context",
        "purpose=cli",
        "--query",
        "Plaintext",
    )
    assert base64.b64decode(plain_b64) == secret.read_bytes()
    described = aws_kms(
        "describe-key", "--key-id", xks_key["KeyId"], "--query", "KeyMetadata.KeyState"
    )
    assert described == "Enabled"
