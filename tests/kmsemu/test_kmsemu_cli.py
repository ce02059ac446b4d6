"""The emulator's command line: help, usage errors, machine-readable start-up output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.procs import REPO, free_port, product_env

from kmsemu.cli import main


def test_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"], prog="xksproxy kms-emulator")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: xksproxy kms-emulator")
    for option in (
        "--bind",
        "--state-dir",
        "--region",
        "--access-key-id",
        "--secret-access-key",
        "--proxy-ca-file",
        "--allow-plain-http",
        "--print-credentials",
        "--json",
    ):
        assert option in out


@pytest.mark.parametrize(
    "args",
    [
        ["--bind", "nowhere"],
        ["--access-key-id", "AKIAEXAMPLEEXAMPLE23"],
        ["--proxy-ca-file", "/no/such/file.pem"],
        ["--account-id", "12"],
    ],
)
def test_usage_errors_exit_2(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*args, "--state-dir", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.startswith("kmsemu: ")


def test_json_output_and_given_credentials(tmp_path: Path) -> None:
    secret = "d2hhdGV2ZXJ3aGF0ZXZlcndoYXRldmVyd2hhdGV2"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kmsemu",
            "--bind",
            f"127.0.0.1:{free_port()}",
            "--state-dir",
            str(tmp_path / "s"),
            "--access-key-id",
            "AKIAEXAMPLEEXAMPLE23",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=product_env({"KMSEMU_SECRET_ACCESS_KEY": secret}),
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        doc = json.loads(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait(15)
        if proc.stdout is not None:
            proc.stdout.close()
    assert doc["endpoint"].startswith("http://127.0.0.1:")
    assert (doc["accessKeyId"], doc["secretAccessKey"]) == ("AKIAEXAMPLEEXAMPLE23", secret)
    assert doc["principalArn"] == "arn:aws:iam::111122223333:user/kmsemu"
    stored = json.loads(Path(doc["credentialsFile"]).read_text())
    assert stored["SecretAccessKey"] == secret
