"""`xksproxy init --hsm-members N`: the embedded default with N SoftHSMv2 members, one backend.

So failover, drain and replication can be tried on one machine. Member 0 is the usual embedded
token ("xksproxy"); member i > 0 is a second token "xksproxy-<i+1>" in the same SoftHSMv2
configuration, loaded through its *own copy* of libsofthsm2.so (``<state>/lib/``): one library
instance per member, as two HSMs would be, so a module fault or re-initialisation on one member
never touches the other (two tokens behind one library instance would fail together). The copy
is refreshed when the system library changes. The demo keys are created replicable on member 0
and copied to the others by the replication ceremony (:mod:`hsm.replicate`); each member has its
own health test key.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hsm.softhsm import ProvisionedToken

BACKEND = "softhsm"
MAX_MEMBERS = 10  # GetHealthStatus lists at most 10 fleet entries


def member_name(i: int) -> str:
    return f"softhsm-{i}"


def token_label(i: int, first_label: str) -> str:
    return first_label if i == 0 else f"{first_label}-{i + 1}"


def module_copy(state_dir: Path, system_module: str, i: int) -> str:
    """The library member ``i`` loads: the system one for member 0, a private copy otherwise."""
    if i == 0:
        return system_module
    real = Path(system_module)
    lib = state_dir / "lib"
    lib.mkdir(mode=0o700, exist_ok=True)
    tag = hashlib.sha256(f"{real}:{real.stat().st_mtime_ns}".encode()).hexdigest()[:8]
    copy = lib / f"libsofthsm2-member{i}-{tag}.so"
    if not copy.exists():
        tmp = copy.with_name(f".{copy.name}.{os.getpid()}")
        shutil.copyfile(real, tmp)
        tmp.chmod(0o700)
        tmp.replace(copy)
    return str(copy)


def hsm_tables(
    tokens: list[ProvisionedToken], modules: list[str], health_key_label: str, so_pin_file: Path
) -> str:
    """The [[hsm]] tables of the members, all in backend :data:`BACKEND`."""
    from xksproxy.admin.embedded import toml_str

    out = []
    for i, (tok, mod) in enumerate(zip(tokens, modules, strict=True)):
        out.append(
            f"""[[hsm]]
name = {toml_str(member_name(i))}
backend = {toml_str(BACKEND)}
model = "SoftHSMv2"
module = {toml_str(mod)}
token_label = {toml_str(tok.token_label)}
pin = {toml_str("file:" + str(tok.user_pin_file))}
so_pin = {toml_str("file:" + str(so_pin_file))}
sessions = 4
mode = "inline"
iv_source = "rng"
health_key_label = {toml_str(health_key_label)}
max_plaintext_bytes = 65536
[hsm.env]
SOFTHSM2_CONF = {toml_str(str(tok.conf_path))}
"""
        )
    return "\n".join(out)


def existing_members(config_path: Path) -> int:
    """How many [[hsm]] tables an existing config has (0 if unreadable)."""
    try:
        return len(tomllib.loads(config_path.read_text(encoding="utf-8")).get("hsm", []))
    except (OSError, tomllib.TOMLDecodeError):
        return 0
