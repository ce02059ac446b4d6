"""`xksproxy keys replicate --from A --to B [ID...]`, and `keys create` on a multi-member backend.

Members of a backend must hold the same keys. The ceremony itself (transport key generated in
the target, wrap under it on the source once its Security Officer marked it trusted, unwrap,
destroy) is :func:`hsm.replicate.replicate`; this module picks the members, finds the source's
SO PIN (``--so-pin REF`` or ``[[hsm]] so_pin``, a ``file:``/``env:`` reference, never a literal)
and reports. ``keys create --hsm BACKEND`` (or a member of one) creates the key *replicable* on
the first member and replicates it to every other member in the same command; if any copy
fails, the new key is removed from every member again (no ciphertext can exist yet), so a key
is on all members or on none.

Exit codes: 0 done, 1 the HSM refused or a key could not be copied (each named), 2 usage.
``--json`` prints ``{"copied": [...], "present": [...], "lifecycle_copied": [...],
"problems": [...]}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from xksproxy.config import Config, ConfigError, resolve_secret

if TYPE_CHECKING:
    from hsm import HsmConfig

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def register(ksub: Any, add_location: Any) -> None:
    p = ksub.add_parser(
        "replicate",
        help="copy keys (every version and lifecycle object) from one [[hsm]] member to another",
    )
    p.add_argument("--from", dest="source", required=True, metavar="A", help="source member")
    p.add_argument("--to", dest="target", required=True, metavar="B", help="target member")
    p.add_argument("ids", nargs="*", metavar="ID", help="key ids to copy (default: every key)")
    p.add_argument(
        "--so-pin",
        metavar="REF",
        help="source Security Officer PIN as file:PATH or env:NAME (default: [[hsm]] so_pin)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_location(p)
    p.set_defaults(func=cmd_replicate)


def _member(config: Config, name: str) -> HsmConfig:
    for h in config.hsms:
        if h.name == name:
            return h
    names = ", ".join(h.name for h in config.hsms)
    raise UsageError(f"no [[hsm]] member named {name!r} (have: {names})")


class UsageError(Exception):
    """A ceremony input the operator must fix (exit 2)."""


def so_pin(config: Config, member: str, ref: str | None) -> str:
    """The SO PIN of ``member`` from ``ref`` or its ``[[hsm]] so_pin`` reference."""
    ref = ref or config.so_pin_refs.get(member)
    if not ref:
        raise UsageError(
            f"[[hsm]] {member}: the ceremony needs its Security Officer PIN; add "
            'so_pin = "file:PATH" to that [[hsm]] table or pass --so-pin file:PATH'
        )
    try:
        return resolve_secret(ref, f"[[hsm]] {member} so_pin", config.path.parent)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def cmd_replicate(args: argparse.Namespace) -> int:
    from xksproxy.admin.cli import _config_path, _load

    config = _load(_config_path(args))
    try:
        source, target = _member(config, args.source), _member(config, args.target)
        if source.name == target.name:
            raise UsageError("--from and --to name the same member")
        if config.backend_of(source.name) != config.backend_of(target.name):
            raise UsageError(f"{source.name} and {target.name} are members of different backends")
        pin = so_pin(config, source.name, args.so_pin)
    except UsageError as exc:
        print(f"xksproxy: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from hsm.replicate import replicate

    report = replicate(source, target, source_so_pin=pin, ids=args.ids or None)
    if args.json:
        print(
            json.dumps(
                {
                    "copied": report.copied,
                    "present": report.present,
                    "lifecycle_copied": report.data_copied,
                    "problems": report.problems,
                }
            )
        )
    else:
        print(
            f"replicated {source.name} -> {target.name}: {len(report.copied)} key(s) copied"
            f" ({', '.join(report.copied) or '-'}), {len(report.present)} already present, "
            f"{len(report.data_copied)} lifecycle object(s) copied"
        )
        for problem in report.problems:
            print(f"xksproxy: error: {problem}", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_FAILURE


def multi_member(config: Config, name: str | None) -> str | None:
    """The backend ``keys create --hsm NAME`` reaches when it has several members, else None."""
    if name is None:
        name = config.hsms[0].name if config.hsms else None
    if name is None:
        return None
    backend = name if name in config.backends else config.backend_of(name)
    return backend if len(config.members(backend)) > 1 else None


def create_on_backend(config: Config, backend: str, key_id: str, usage: frozenset[str]) -> int:
    """Create ``key_id`` on every member of ``backend`` (create on one, replicate to the rest)."""
    from hsm import admin
    from hsm.replicate import replicate

    members = config.members(backend)
    first, rest = members[0], members[1:]
    try:
        pin = so_pin(config, first.name, None)
    except UsageError as exc:
        print(f"xksproxy: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for m in members:
        if any(k.label == key_id for k in admin.list_keys(m)):
            print(f"xksproxy: error: a key labelled {key_id!r} already exists on {m.name}")
            return EXIT_FAILURE
    admin.create_key(first, key_id, usage, replicable=True)
    done = [first]
    try:
        for m in rest:
            report = replicate(first, m, source_so_pin=pin, ids=[key_id])
            if not report.ok or key_id not in report.copied:
                raise RuntimeError("; ".join(report.problems) or f"{key_id} was not copied")
            done.append(m)
    except Exception as exc:
        for m in done:
            admin.delete_key(m, key_id)
        print(
            f"xksproxy: error: replicating {key_id} to backend {backend} failed ({exc}); "
            "the key was removed from every member again",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    names = ", ".join(m.name for m in members)
    print(f"created key {key_id} on backend {backend} (members: {names}), replicated in the HSMs")
    return EXIT_OK
