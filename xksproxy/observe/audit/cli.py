"""``xksproxy audit verify``: find the key, verify the files, print the verdict, exit status.

Exit 0 only if the chain is intact, 1 when it was tampered with, 2 when it could not be checked
(no files, no key, unreadable file). ``xksproxy.admin.cli`` parses the arguments and calls
:func:`main_verify`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from xksproxy import environment
from xksproxy.observe.audit.chain import parse_key_text
from xksproxy.observe.audit.verify import verify_files


def load_key_from_config(config_path: Path) -> bytes:
    """Resolve ``[audit] key`` from the proxy configuration."""
    from xksproxy.config import load_config

    cfg = load_config(config_path)
    if cfg.audit.key is None:
        raise ValueError("[audit] key is not configured")
    return cfg.audit.key


def main_verify(
    files: list[str], *, config_path: Path | None = None, key: bytes | None = None
) -> int:
    """``xksproxy audit verify FILE...``: print the verdict; exit 0 only if the chain is intact.

    The key comes from ``key``, else ``$XKSPROXY_AUDIT_KEY_FILE`` (same text as ``[audit] key``),
    else the configuration (``config_path``, ``$XKSPROXY_CONFIG`` or the state dir's config).
    """
    if not files:
        print("audit verify: no files given", file=sys.stderr)
        return 2
    try:
        if key is None:
            key = _resolve_key(config_path)
    except Exception as exc:
        print(f"audit verify: cannot load the audit key: {exc}", file=sys.stderr)
        return 2
    try:
        result = verify_files(files, key)
    except OSError as exc:
        print(f"audit verify: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    for note in result.notes:
        print(f"note: {note}")
    if result.ok:
        print(result.message)
        return 0
    print(f"TAMPERED: {result.message}")
    print(f"({result.records} records verified before it)")
    return 1


def _resolve_key(config_path: Path | None) -> bytes:
    key_file = environment.AUDIT_KEY_FILE.get()
    if key_file:
        return parse_key_text(Path(key_file).read_text())
    if config_path is None:
        env = environment.CONFIG.get()
        config_path = Path(env) if env else environment.default_state_dir() / "xksproxy.toml"
    return load_key_from_config(config_path)
