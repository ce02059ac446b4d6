"""``xksproxy audit verify`` and ``xksproxy audit acknowledge``: find the key and the files,
do the work, print the verdict, exit status.

``verify`` exits 0 only if the chain is intact and whole (every gap acknowledged), 1 when it was
tampered with, has an unacknowledged gap, or cannot be proved whole (missing head, missing
earlier files — unless ``--allow-partial``), 2 when it could not be checked (no files, no key,
unreadable file). ``acknowledge`` exits 0 when it wrote the ack (or there was nothing to
acknowledge), 1 when the record could not be written, 2 on a usage or configuration error.
``xksproxy.admin.cli`` parses the arguments and calls :func:`main_verify` /
:func:`main_acknowledge`.
"""

from __future__ import annotations

import getpass
import os
import sys
from dataclasses import asdict
from pathlib import Path

import orjson

from xksproxy import environment
from xksproxy.observe.audit.chain import alarm_path, log_files, parse_key_text
from xksproxy.observe.audit.verify import Anchor, verify_files
from xksproxy.observe.audit.writer import MAX_EVENT_TEXT, AuditLog

#: What ``--help`` says about where the files are when none is given.
DEFAULT_FILES_HELP = (
    "default: the configured [audit] file and its rotated files "
    "(embedded default: STATE_DIR/audit/xksproxy-audit*.log)"
)


def load_key_from_config(config_path: Path) -> bytes:
    """Resolve ``[audit] key`` from the proxy configuration."""
    from xksproxy.config import load_config

    cfg = load_config(config_path)
    if cfg.audit.key is None:
        raise ValueError("[audit] key is not configured")
    return cfg.audit.key


def _config_path(config_path: Path | None) -> Path:
    if config_path is not None:
        return config_path
    env = environment.CONFIG.get()
    return Path(env) if env else environment.default_state_dir() / "xksproxy.toml"


def _configured_audit(config_path: Path | None) -> tuple[Path, bytes]:
    """(``[audit] file``, key) from the configuration; ValueError when auditing is off."""
    from xksproxy.config import load_config

    cfg = load_config(_config_path(config_path))
    if cfg.audit.file is None or cfg.audit.key is None:
        raise ValueError("[audit] file is empty: the audit log is disabled")
    return cfg.audit.file, cfg.audit.key


def main_verify(
    files: list[str],
    *,
    config_path: Path | None = None,
    key: bytes | None = None,
    allow_partial: bool = False,
    json_out: bool = False,
) -> int:
    """``xksproxy audit verify [FILE...]``: print the verdict; exit 0 only if intact and whole.

    Without files: the configured ``[audit] file`` and its rotated files. The key comes from
    ``key``, else ``$XKSPROXY_AUDIT_KEY_FILE`` (same text as ``[audit] key``), else the
    configuration (``config_path``, ``$XKSPROXY_CONFIG`` or the state dir's config).
    """
    try:
        if not files:
            live, cfg_key = _configured_audit(config_path)
            paths = log_files(live)
            if not paths:
                print(f"audit verify: no audit log at {live}", file=sys.stderr)
                return 2
            files = [str(p) for p in paths]
            key = key or cfg_key
        if key is None:
            key = _resolve_key(config_path)
    except Exception as exc:
        print(f"audit verify: cannot load the audit configuration or key: {exc}", file=sys.stderr)
        return 2
    try:
        anchor = _newest_anchor(config_path)
    except Exception as exc:
        print(f"audit verify: cannot read the HSM checkpoint: {exc}", file=sys.stderr)
        return 2
    try:
        result = verify_files(files, key, allow_partial=allow_partial, anchor=anchor)
    except OSError as exc:
        print(f"audit verify: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    if anchor is not None and result.ok:
        result.notes.append(f"HSM checkpoint of {anchor.time} (seq {anchor.seq}) matches")
    if json_out:
        doc = {"files": files, **asdict(result)}
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode() + "\n")
        return 0 if result.ok else 1
    for note in result.notes:
        print(f"note: {note}")
    for gap in result.gaps:
        print(f"gap: {gap}")
    if result.ok:
        print(result.message)
        return 0
    print(f"TAMPERED: {result.message}" if not result.unacknowledged else result.message)
    print(f"({result.records} records verified)")
    return 1


def main_acknowledge(
    reason: str, *, config_path: Path | None = None, json_out: bool = False
) -> int:
    """``xksproxy audit acknowledge --reason TEXT``: an ``ack`` record on the chain for every
    gap so far, then lift the alarm so the workers serve Encrypt/Decrypt again (within ~1 s)."""
    reason = reason.strip()
    if not reason or len(reason) > MAX_EVENT_TEXT or any(not " " <= c <= "~" for c in reason):
        print(
            "audit acknowledge: --reason must be 1-1024 printable ASCII characters "
            "(what was investigated; it goes onto the chain)",
            file=sys.stderr,
        )
        return 2
    try:
        live, key = _configured_audit(config_path)
    except Exception as exc:
        print(f"audit acknowledge: cannot load the audit configuration: {exc}", file=sys.stderr)
        return 2
    writer = AuditLog(live, key)
    try:
        seq = writer.acknowledge(reason, _operator())
    except OSError as exc:
        print(f"audit acknowledge: cannot write to {live}: {exc}", file=sys.stderr)
        return 1
    finally:
        writer.close()
    if json_out:
        doc = {"acknowledged": seq is not None, "seq": seq, "file": str(live)}
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode() + "\n")
    elif seq is None:
        print(f"audit acknowledge: no gap to acknowledge ({alarm_path(live).name} not present)")
    else:
        print(f"audit acknowledge: ack recorded as seq {seq}; Encrypt/Decrypt resume")
    return 0


def _newest_anchor(config_path: Path | None) -> Anchor | None:
    """The newest HSM checkpoint when ``[audit] anchor_hsm`` is configured (else None)."""
    from xksproxy.config import load_config
    from xksproxy.observe.audit import anchor

    path = _config_path(config_path)
    if not path.is_file():
        return None
    cfg = load_config(path)
    if cfg.audit.anchor_hsm is None:
        return None
    cp = anchor.newest(cfg)
    return None if cp is None else Anchor(cp.seq, cp.mac, cp.time, cp.valid)


def main_checkpoint(
    *, config_path: Path | None = None, create_key: bool = False, json_out: bool = False
) -> int:
    """``xksproxy audit checkpoint [--create-key]``: write an HSM checkpoint of the live log's
    tip now (``--create-key`` first generates the anchor key inside the HSM if missing)."""
    from xksproxy.config import ConfigError, load_config
    from xksproxy.observe.audit import anchor

    try:
        cfg = load_config(_config_path(config_path))
        if cfg.audit.file is None or cfg.audit.anchor_hsm is None:
            raise ValueError("set [audit] anchor_hsm to the [[hsm]] that anchors the chain")
    except (ConfigError, ValueError) as exc:
        print(f"audit checkpoint: {exc}", file=sys.stderr)
        return 2
    try:
        created = anchor.ensure_key(cfg) if create_key else False
        cp = anchor.write(cfg)
    except anchor.Rollback as exc:
        print(f"audit checkpoint: ROLLBACK: {exc} (recorded as a gap)", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"audit checkpoint: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if json_out:
        doc = {
            "created_key": created,
            "seq": cp.seq if cp else None,
            "time": cp.time if cp else None,
        }
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode() + "\n")
    elif cp is None:
        print("audit checkpoint: the audit log is empty; nothing to anchor yet")
    else:
        print(f"audit checkpoint: seq {cp.seq} anchored in [[hsm]] {cfg.audit.anchor_hsm}")
    return 0


def _operator() -> str:
    """Who acknowledges (login name, else uid): recorded on the chain."""
    try:
        return getpass.getuser()
    except Exception:
        return f"uid {os.getuid()}"


def _resolve_key(config_path: Path | None) -> bytes:
    key_file = environment.AUDIT_KEY_FILE.get()
    if key_file:
        return parse_key_text(Path(key_file).read_text())
    return load_key_from_config(_config_path(config_path))
