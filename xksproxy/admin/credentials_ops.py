"""``xksproxy credentials add|remove``: edit a key store's SigV4 credentials in the config file.

Why text editing instead of re-rendering the TOML: the file is the operator's — comments, order
and layout must survive. We only insert or cut one ``[[keystore.credentials]]`` table inside the
right ``[[keystore]]`` block.

Safety:
- the edited text is validated with the real loader (:func:`xksproxy.config.load_config`) on a
  temporary file in the same directory before it replaces the original atomically (readers and
  the running proxy's reload poller see the old or the new file, never a mix);
- an exclusive lock on ``<config>.lock`` serialises concurrent edits;
- a new secret goes to a fresh 0600 file beside the store's other secret files (never into the
  config); the secret of a removed credential is deleted once nothing references it, and the
  KMS console file (``kms-console.json``) is rewritten if it held that credential.

A running proxy notices the change within about a second (see :mod:`xksproxy.runtime.reload`): a new
credential starts working and a removed one stops working without a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sigv4
from xksproxy.admin import embedded
from xksproxy.admin.keystore_lookup import KeystoreNotFound, keystore_index
from xksproxy.config import ConfigError, load_config
from xksproxy.xks.uri import base_path

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*(\]\]?)\s*(#.*)?$")


class CredentialsError(Exception):
    """An edit that cannot be made; the message says why (never contains a secret)."""


@dataclass(frozen=True)
class _Block:
    start: int  # index of the [[keystore]] header line
    end: int  # index one past the store's last own line


def _header(line: str) -> tuple[bool, str] | None:
    """``(is_array_table, dotted name)`` for a table header line, else None."""
    m = _HEADER.match(line)
    if not m or (m.group(1) == "[[") != (m.group(3) == "]]"):
        return None
    name = re.sub(r"\s*\.\s*", ".", m.group(2).replace('"', ""))
    return m.group(1) == "[[", name


def _store_blocks(lines: list[str]) -> list[_Block]:
    """Line ranges of every ``[[keystore]]`` table including its sub-tables."""
    blocks: list[_Block] = []
    start: int | None = None
    for i, line in enumerate(lines):
        h = _header(line)
        if h is None:
            continue
        is_array, name = h
        if is_array and name == "keystore":
            if start is not None:
                blocks.append(_Block(start, i))
            start = i
        elif start is not None and not name.startswith("keystore."):
            blocks.append(_Block(start, i))
            start = None
    if start is not None:
        blocks.append(_Block(start, len(lines)))
    return [_Block(b.start, _trim_end(lines, b.start, b.end)) for b in blocks]


def _trim_end(lines: list[str], start: int, end: int) -> int:
    """Exclude trailing blank and comment lines (they introduce whatever comes next)."""
    while end > start + 1 and (
        not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")
    ):
        end -= 1
    return end


def _find_store(raw: dict[str, Any], wanted: str) -> int:
    """Index of the ``[[keystore]]`` table ``wanted`` names (the rule all commands share)."""
    stores = raw.get("keystore", [])
    pairs = [(str(s.get("name")), str(s.get("path_prefix", ""))) for s in stores]
    try:
        return keystore_index(pairs, wanted)
    except KeystoreNotFound as exc:
        raise CredentialsError(str(exc)) from None


@contextlib.contextmanager
def _locked(config_path: Path) -> Iterator[None]:
    fd = os.open(config_path.with_name(config_path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _commit(config_path: Path, new_text: str) -> None:
    """Validate ``new_text`` with the real loader, then replace the config atomically."""
    mode = config_path.stat().st_mode & 0o777
    probe = config_path.with_name(f".{config_path.name}.{os.getpid()}.check.toml")
    try:
        embedded.atomic_write(probe, new_text.encode("utf-8"), mode)
        load_config(probe, env={})
    except ConfigError as exc:
        raise CredentialsError(f"the edited configuration would be invalid: {exc}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    embedded.atomic_write(config_path, new_text.encode("utf-8"), mode)


def _secret_dir(config_path: Path, store: dict[str, Any]) -> Path:
    for cred in store.get("credentials", []):
        ref = str(cred.get("secret", ""))
        if ref.startswith("file:"):
            p = Path(ref[5:]).expanduser()
            return (p if p.is_absolute() else config_path.parent / p).parent
    return config_path.parent / "secrets"


def _ref_for(config_path: Path, secret_file: Path) -> str:
    with contextlib.suppress(ValueError):
        return "file:" + str(secret_file.relative_to(config_path.parent))
    return "file:" + str(secret_file)


def add(config_path: Path, keystore: str) -> tuple[str, sigv4.Credential]:
    """Add a fresh credential to ``keystore``; returns (URI path, credential)."""
    config_path = Path(config_path).absolute()
    with _locked(config_path):
        text = config_path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
        idx = _find_store(raw, keystore)
        store = raw["keystore"][idx]
        existing = {c.get("access_key_id") for c in store.get("credentials", [])}
        cred = sigv4.generate_credential()
        while cred.access_key_id in existing:
            cred = sigv4.generate_credential()
        sdir = embedded.private_dir(_secret_dir(config_path, store))
        secret_file = sdir / f"{store.get('name', 'store')}-{cred.access_key_id}.secret"
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (cred.secret + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        block = _store_blocks(lines)[idx]
        table = [
            "\n",
            "[[keystore.credentials]]\n",
            f"access_key_id = {embedded.toml_str(cred.access_key_id)}\n",
            f"secret = {embedded.toml_str(_ref_for(config_path, secret_file))}\n",
        ]
        new_lines = lines[: block.end] + table + lines[block.end :]
        try:
            _commit(config_path, "".join(new_lines))
        except BaseException:
            secret_file.unlink(missing_ok=True)
            raise
        return base_path(store.get("path_prefix", "")), cred


def remove(config_path: Path, keystore: str, access_key_id: str) -> tuple[str, list[str]]:
    """Remove ``access_key_id`` from ``keystore``; returns (URI path, remaining AKIDs)."""
    config_path = Path(config_path).absolute()
    with _locked(config_path):
        text = config_path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
        idx = _find_store(raw, keystore)
        store = raw["keystore"][idx]
        creds = store.get("credentials", [])
        akids = [c.get("access_key_id") for c in creds]
        if access_key_id not in akids:
            raise CredentialsError(
                f"key store {store.get('name')!r} has no credential {access_key_id!r} "
                f"(have: {', '.join(map(str, akids))})"
            )
        if len(creds) == 1:
            raise CredentialsError(
                f"refusing to remove the last credential of key store {store.get('name')!r}: "
                "add the new one first (`xksproxy credentials add`), switch KMS to it, "
                "then remove the old one"
            )
        lines = text.splitlines(keepends=True)
        block = _store_blocks(lines)[idx]
        start, end = _credential_table(lines, block, access_key_id)
        removed_ref = str(creds[akids.index(access_key_id)].get("secret", ""))
        new_lines = lines[:start] + lines[end:]
        _commit(config_path, "".join(new_lines))
        _delete_unreferenced_secret(config_path, removed_ref, "".join(new_lines))
        remaining = [a for a in akids if a != access_key_id]
        _forget_in_console(config_path, store.get("name", ""), access_key_id)
        return base_path(store.get("path_prefix", "")), remaining


def _forget_in_console(config_path: Path, keystore: str, removed: str) -> None:
    """``kms-console.json`` must not keep a removed credential's secret: point it at the store's
    newest remaining credential (when it named the removed one)."""
    cfg = load_config(config_path, env={})
    store = next(s for s in cfg.keystores if s.name == keystore)
    embedded.rewrite_console_if_it_names(
        config_path, removed, store.uri_path, store.credentials[-1]
    )


def _credential_table(lines: list[str], block: _Block, akid: str) -> tuple[int, int]:
    """Line range of the ``[[keystore.credentials]]`` table holding ``akid`` inside ``block``."""
    headers = [i for i in range(block.start, block.end) if _header(lines[i]) is not None]
    headers.append(block.end)
    for h, nxt in itertools.pairwise(headers):
        parsed = _header(lines[h])
        if parsed != (True, "keystore.credentials"):
            continue
        body = "".join(lines[h + 1 : nxt])
        with contextlib.suppress(tomllib.TOMLDecodeError):
            if tomllib.loads(body).get("access_key_id") == akid:
                end = _trim_end(lines, h, nxt)
                # also drop the blank line(s) that separated this table from the previous one
                start = h
                while start > block.start and not lines[start - 1].strip():
                    start -= 1
                return start, end
    raise CredentialsError(f"cannot locate the table of credential {akid!r} in the file")


def _delete_unreferenced_secret(config_path: Path, ref: str, new_text: str) -> None:
    if not ref.startswith("file:") or ref in new_text:
        return
    p = Path(ref[5:]).expanduser()
    p = p if p.is_absolute() else config_path.parent / p
    with contextlib.suppress(OSError):
        p.unlink()


# -- CLI entry points (called by xksproxy.admin.cli) -----------------------------------------
def main_add(config_path: Path, keystore: str) -> int:
    try:
        uri_path, cred = add(config_path, keystore)
    except (CredentialsError, OSError) as exc:
        print(f"xksproxy: credentials add: {exc}", file=sys.stderr)
        return 1
    print(
        f"xksproxy: added credential {cred.access_key_id} to {uri_path}; a running proxy "
        "accepts it within a few seconds. KMS console JSON:",
        file=sys.stderr,
    )
    sys.stdout.write(embedded.console_json(uri_path, cred).decode("ascii"))
    sys.stdout.flush()
    return 0


def main_remove(config_path: Path, keystore: str, access_key_id: str) -> int:
    try:
        uri_path, remaining = remove(config_path, keystore, access_key_id)
    except (CredentialsError, OSError) as exc:
        print(f"xksproxy: credentials remove: {exc}", file=sys.stderr)
        return 1
    print(
        f"xksproxy: removed credential {access_key_id} from {uri_path}; a running proxy rejects "
        f"it within a few seconds. Remaining: {', '.join(remaining)}. KMS console JSON for the "
        "newest remaining credential:",
        file=sys.stderr,
    )
    try:
        cfg = load_config(Path(config_path))
    except ConfigError as exc:
        print(f"xksproxy: credentials remove: {exc}", file=sys.stderr)
        return 1
    creds = [c for s in cfg.keystores if s.uri_path == uri_path for c in s.credentials]
    sys.stdout.write(embedded.console_json(uri_path, creds[-1]).decode("ascii"))
    sys.stdout.flush()
    return 0
