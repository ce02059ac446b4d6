"""Fault-injection PKCS#11 module for tests ("slow HSM", "HSM fault"), wrapping the real SoftHSMv2.

Usage in-process::

    shim = FaultShim.create(tmp_path)                 # compiles faultshim.c once (cached)
    cfg = shim.hsm_config(hsm_config)                 # same token, module = the shim
    shim.set("delay", delay_ms=200); shim.set("device_error"); shim.set("ok")

Usage from a server process (e.g. a teammate's service test): write the [[hsm]] table with
``module = shim.module_path`` and put every ``shim.env()`` item under ``[hsm.env]`` (next to
SOFTHSM2_CONF), then call ``shim.set(...)`` from the test while the server runs. The shim re-reads
the control file at most every 20 ms, so allow ~50 ms for a change to take effect.

The shim forwards to a *private copy* of libsofthsm2.so, so an in-process pool on the shim and one
on the real module are two independent SoftHSM instances (as two processes would be) and
re-initialising one never disturbs the other. Both still see the same token files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Literal

from hsm import HsmConfig, module

SOURCE = Path(__file__).with_name("faultshim.c")
REPO = Path(__file__).resolve().parents[2]
REAL_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
Mode = Literal["ok", "device_error", "delay"]


def _cache_dir() -> Path:
    """The compiled shim is cached across runs (compiling costs a second), in the checkout's
    pytest cache (git-ignored) or ``$XDG_CACHE_HOME``: never in /tmp, where it outlived every
    run (the session-end check in tests/conftest.py fails a run that leaves /tmp/xksproxy-*)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or REPO / ".pytest_cache")
    path = base / f"xksproxy-faultshim-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def build(real_module: str = REAL_MODULE) -> tuple[Path, Path]:
    """Compile the shim (cached by source hash) and copy the real module next to it.

    Returns (shim path, private copy of the real module). Safe to call from parallel processes:
    each writes a temporary file and renames it into place.
    """
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    cache = _cache_dir()
    shim = cache / f"faultshim-{digest}.so"
    if not shim.exists():
        tmp = cache / f".faultshim-{digest}-{os.getpid()}.so"
        subprocess.run(
            [
                "cc",
                "-O2",
                "-shared",
                "-fPIC",
                "-fvisibility=hidden",
                "-o",
                str(tmp),
                str(SOURCE),
                "-ldl",
                "-lpthread",
            ],
            check=True,
            capture_output=True,
        )
        tmp.replace(shim)
    real = Path(real_module)
    real_digest = hashlib.sha256(f"{real}:{real.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    copy = cache / f"real-module-{real_digest}.so"
    if not copy.exists():
        tmp = cache / f".real-module-{real_digest}-{os.getpid()}.so"
        shutil.copyfile(real, tmp)
        tmp.replace(copy)
    return shim, copy


@dataclasses.dataclass
class FaultShim:
    """One control file steering every process that loads the shim with ``env()``."""

    module_path: str
    real_module_copy: str
    control_file: Path

    @classmethod
    def create(cls, directory: str | os.PathLike[str], real_module: str = REAL_MODULE) -> FaultShim:
        shim, copy = build(real_module)
        control = Path(directory) / "faultshim.control"
        obj = cls(str(shim), str(copy), control)
        obj.set("ok")
        return obj

    def env(self) -> dict[str, str]:
        """Environment for a process loading the shim (add SOFTHSM2_CONF as usual)."""
        return {
            "FAULTSHIM_CONTROL": str(self.control_file),
            "FAULTSHIM_MODULE": self.real_module_copy,
        }

    def hsm_config(self, base: HsmConfig, **overrides: object) -> HsmConfig:
        """``base`` pointed at the shim (same token, PIN and SOFTHSM2_CONF)."""
        return dataclasses.replace(
            base, module=self.module_path, env={**base.env, **self.env()}, **overrides
        )  # type: ignore[arg-type]

    def set(self, mode: Mode = "ok", delay_ms: int = 0) -> None:
        """Switch the behaviour: "ok", "device_error" (every call), "delay" (crypto calls)."""
        if mode not in ("ok", "device_error", "delay"):
            raise ValueError(f"unknown fault mode {mode!r}")
        text = f"delay {int(delay_ms)}\n" if mode == "delay" else f"{mode}\n"
        tmp = self.control_file.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.control_file)


def token_slot_id(cfg: HsmConfig) -> int:
    """The slot of ``cfg``'s token. SoftHSMv2 derives it from the token serial, so it is the same
    in the shim's private instance and in the real module (tests close that slot's sessions or
    finalise through the real copy from outside)."""
    mod = module.acquire(cfg.module, cfg.env)
    try:
        return mod.find_token(cfg.token_label).slot.slot_id
    finally:
        module.release(mod)
