"""Embedded SoftHSMv2 token: a private softhsm2.conf, token directory and generated PINs.

This is what lets ``xksproxy`` run anywhere without a hardware HSM. Everything lives under one state
directory (dirs 0700, files 0600) and a second call reuses what the first one created, so
``xksproxy init`` and test fixtures can call it freely. Tokens are initialised with
``softhsm2-util`` (the Debian ``softhsm2`` package) with ``SOFTHSM2_CONF`` pointing at our conf,
so the user's global SoftHSM configuration is never touched.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .types import HsmConfig

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


@dataclass(frozen=True)
class ProvisionedToken:
    """Paths of a provisioned token; read the PINs from the files (never kept in repr)."""

    state_dir: Path
    conf_path: Path
    token_dir: Path
    module_path: str
    token_label: str
    user_pin_file: Path
    so_pin_file: Path

    def user_pin(self) -> str:
        return self.user_pin_file.read_text().strip()

    def env(self) -> dict[str, str]:
        """Environment the module needs (the conf is per process: SOFTHSM2_CONF)."""
        return {"SOFTHSM2_CONF": str(self.conf_path)}

    def hsm_config(self, name: str = "softhsm-0", **overrides: Any) -> HsmConfig:
        """An HsmConfig for this token (overrides: sessions, mode, module, ...)."""
        cfg = HsmConfig(
            name=name,
            module=self.module_path,
            token_label=self.token_label,
            pin=self.user_pin(),
            env=self.env(),
        )
        return dataclasses.replace(cfg, **overrides) if overrides else cfg


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def _secret_file(path: Path) -> str:
    """Read the PIN in ``path``, creating it (0600, exclusive) with a fresh PIN if absent."""
    if not path.exists():
        pin = secrets.token_hex(16)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(pin + "\n")
    path.chmod(0o600)
    return path.read_text().strip()


def _token_labels(conf: Path) -> set[str]:
    out = subprocess.run(
        ["softhsm2-util", "--show-slots"],
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    labels = set()
    for line in out.splitlines():
        key, _, value = line.strip().partition(":")
        if key.strip() == "Label" and value.strip():
            labels.add(value.strip())
    return labels


def provision(
    state_dir: str | os.PathLike[str],
    token_label: str = "xksproxy",  # noqa: S107 - a token label, not a password
    *,
    module_path: str = DEFAULT_MODULE,
) -> ProvisionedToken:
    """Create (or reuse) ``state_dir/softhsm2.conf``, ``state_dir/tokens`` and the PIN files,
    and initialise a token labelled ``token_label`` if none exists yet."""
    state = Path(state_dir).absolute()
    _private_dir(state)
    secrets_dir = state / "secrets"
    token_dir = state / "tokens"
    _private_dir(secrets_dir)
    _private_dir(token_dir)
    conf = state / "softhsm2.conf"
    text = (
        f"# SoftHSMv2 configuration for xksproxy's embedded token (generated).\n"
        f"directories.tokendir = {token_dir}\n"
        f"objectstore.backend = file\n"
        f"log.level = ERROR\n"
        f"slots.removable = false\n"
    )
    if not conf.exists() or conf.read_text() != text:
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    conf.chmod(0o600)
    user_pin_file = secrets_dir / "user.pin"
    so_pin_file = secrets_dir / "so.pin"
    user_pin = _secret_file(user_pin_file)
    so_pin = _secret_file(so_pin_file)
    if token_label not in _token_labels(conf):
        # PINs go through argv of a short-lived child we start ourselves; softhsm2-util offers
        # no file/stdin option. The state dir is private, and nothing here logs the command.
        argv = ["softhsm2-util", "--init-token", "--free", "--label", token_label]
        try:
            subprocess.run(
                [*argv, "--so-pin", so_pin, "--pin", user_pin],
                env={**os.environ, "SOFTHSM2_CONF": str(conf)},
                capture_output=True,
                check=True,
            )
        except subprocess.CalledProcessError as exc:
            # The original's str()/repr() show the command line, PINs included: re-raise
            # without them (and without chaining the original into tracebacks).
            raise subprocess.CalledProcessError(
                exc.returncode,
                [*argv, "--so-pin", "***", "--pin", "***"],
                output=exc.output,
                stderr=exc.stderr,
            ) from None
    for path in token_dir.rglob("*"):
        path.chmod(0o700 if path.is_dir() else 0o600)
    return ProvisionedToken(
        state_dir=state,
        conf_path=conf,
        token_dir=token_dir,
        module_path=module_path,
        token_label=token_label,
        user_pin_file=user_pin_file,
        so_pin_file=so_pin_file,
    )
