"""Start-up failures through the CLI: non-zero exit, one clear line naming the fix, no traceback,
no secret (HSM ones used to be a dozen lines of worker crash loop)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from adversarial_helpers import Target
from server_harness import cli_command, cli_env, free_port

REPO = Path(__file__).resolve().parents[2]


def _serve(config: Path, bind: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *cli_command(),
            "serve",
            "--config",
            str(config),
            "--bind",
            bind,
            "--workers",
            "1",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
        cwd=REPO,
        check=False,
    )


def _state(target: Target) -> Path:
    return target.server.state.path


def _assert_clean_refusal(
    done: subprocess.CompletedProcess[str], target: Target, must_name: str
) -> None:
    out = done.stdout + done.stderr
    assert done.returncode not in (0, None), out[-2000:]
    assert "Traceback" not in out, out[-2000:]
    assert must_name in out, out[-2000:]
    pins = [f.read_text().strip() for f in (_state(target) / "secrets").glob("*.pin")]
    for secret in [*target.server.state.secrets_used, *pins]:
        assert secret not in out


def test_port_in_use_is_refused(target: Target) -> None:
    """granian binds with SO_REUSEPORT: a second proxy on a busy port used to start and silently
    take half of the first one's traffic."""
    done = _serve(target.server.state.config, target.server.host, "--plain-http")
    _assert_clean_refusal(done, target, "already in use")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def _variant(target: Target, name: str, pattern: str, replacement: str) -> Path:
    text = target.server.state.config.read_text()
    new, count = re.subn(pattern, replacement, text, count=1, flags=re.M)
    assert count == 1, pattern
    path = _state(target) / name
    path.write_text(new)
    return path


@pytest.mark.parametrize(
    ("case", "must_name"),
    [
        ("missing-config", "not found"),
        ("invalid-toml", "TOML"),
        ("unknown-option", "bogus_option"),
        ("loose-secret", "chmod 600"),
        ("missing-module", "PKCS#11 module"),
        ("missing-cert", "cert_file"),
        ("wrong-pin", "CKR_PIN_INCORRECT"),
        ("unknown-token", "no-such-token"),
    ],
)
def test_startup_errors_say_what_to_fix(target: Target, case: str, must_name: str) -> None:
    state = _state(target)
    extra = ("--plain-http",)
    if case == "missing-config":
        config = state / "does-not-exist.toml"
    elif case == "invalid-toml":
        config = state / "invalid.toml"
        config.write_text("this is [not toml\n")
    elif case == "unknown-option":
        config = _variant(
            target, "unknown.toml", r"^max_in_flight = .*$", "max_in_flight = 256\nbogus_option = 1"
        )
    elif case == "loose-secret":
        loose = state / "secrets" / "loose.secret"
        loose.write_text(target.cred.secret + "\n")
        os.chmod(loose, 0o644)
        config = _variant(target, "loose.toml", r'^secret = "file:.*"$', f'secret = "file:{loose}"')
    elif case == "missing-module":
        config = _variant(
            target, "nomodule.toml", r"^module = .*$", 'module = "/nonexistent/libpkcs11.so"'
        )
    elif case == "wrong-pin":
        wrong = state / "secrets" / "wrong.pin"
        wrong.write_text("not-the-pin\n")
        os.chmod(wrong, 0o600)
        config = _variant(target, "wrongpin.toml", r"^pin = .*$", f'pin = "file:{wrong}"')
    elif case == "unknown-token":
        config = _variant(
            target, "notoken.toml", r"^token_label = .*$", 'token_label = "no-such-token"'
        )
    else:
        config = _variant(
            target, "nocert.toml", r"^cert_file = .*$", 'cert_file = "/nonexistent/server.crt"'
        )
        extra = ()
    done = _serve(config, f"127.0.0.1:{free_port()}", *extra)
    _assert_clean_refusal(done, target, must_name)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.count(str(config)) <= 1, done.stderr  # the file named once, not twice
