"""Config editing helpers for the ops tests (text appended/replaced per conf/xksproxy.toml).

A module of its own, not conftest.py: ``from conftest import ...`` picks whichever test
directory's conftest was imported first when several directories run together.
"""

from __future__ import annotations

from pathlib import Path


def set_option(config_path: Path, section: str, key: str, value: str) -> None:
    """Replace ``key = ...`` inside ``[section]`` (first occurrence after the header)."""
    lines = config_path.read_text().splitlines(keepends=True)
    in_section = False
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith("["):
            in_section = s in (f"[{section}]", f"[[{section}]]")
            continue
        if in_section and s.split("=", 1)[0].strip() == key:
            lines[i] = f"{key} = {value}\n"
            config_path.write_text("".join(lines))
            return
    raise KeyError(f"{section}.{key} not in {config_path}")


def add_store(config_path: Path, name: str, prefix: str, *, rate: float = 0, burst: int = 0):
    """Append a key store using the demo keys, with its own fresh credential; returns it."""
    import sigv4

    cred = sigv4.generate_credential()
    secret_file = config_path.parent / "secrets" / f"{name}-1.secret"
    secret_file.write_text(cred.secret + "\n")
    secret_file.chmod(0o600)
    with config_path.open("a") as fh:
        fh.write(f"""
[[keystore]]
name = "{name}"
path_prefix = "{prefix}"
hsm = "softhsm-0"
keys = ["demo"]
[keystore.quota]
rate = {rate}
burst = {burst}

[[keystore.credentials]]
access_key_id = "{cred.access_key_id}"
secret = "file:{secret_file}"
""")
    return cred


def demo_credential(config_path: Path):
    from xksproxy.config import load_config

    return load_config(config_path, env={}).keystores[0].credentials[0]
