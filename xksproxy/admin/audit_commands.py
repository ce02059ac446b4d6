"""``xksproxy audit verify`` and ``xksproxy audit acknowledge``: their arguments and help.

Kept out of ``cli.py`` (which only calls :func:`register`) so the audit commands have one home;
the work itself is :mod:`xksproxy.observe.audit.cli`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

AddLocation = Callable[[argparse.ArgumentParser], None]
ConfigPath = Callable[[argparse.Namespace], Path]


def register(sub: Any, add_location: AddLocation, config_path: ConfigPath) -> None:
    """Add ``audit verify`` and ``audit acknowledge`` to the top-level subparsers ``sub``."""
    from xksproxy.observe.audit.cli import DEFAULT_FILES_HELP

    audit = sub.add_parser("audit", help="audit log tools (verify, acknowledge a gap)")
    asub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    p = asub.add_parser(
        "verify",
        help="verify the HMAC chain of the audit log (strict: the whole chain, head included)",
        description=(
            "Verify the audit chain. Exit 0: intact and whole, every gap acknowledged; "
            "1: tampered, an unacknowledged gap, or not provably whole (missing head or earlier "
            "files; see --allow-partial); 2: could not be checked."
        ),
    )
    p.add_argument(
        "files", nargs="*", metavar="FILE", help=f"log files, any order; {DEFAULT_FILES_HELP}"
    )
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="accept a slice: missing earlier files or head file become notes, not failures",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help=(
            "one JSON object: ok, records, message, notes, gaps, unacknowledged, last_seq, files"
        ),
    )
    add_location(p)
    p.set_defaults(func=lambda args: _verify(args, config_path))

    p = asub.add_parser(
        "acknowledge",
        help="acknowledge the recorded audit gaps (itself audited); Encrypt/Decrypt resume",
        description=(
            "After a gap (the audit log was cut, replaced or could not be written) the proxy "
            "refuses Encrypt/Decrypt ([audit] refuse_on_gap). Once investigated, this writes an "
            "'ack' record with your reason and login name onto the chain and lifts the alarm; "
            "every worker resumes within about a second."
        ),
    )
    p.add_argument(
        "--reason",
        required=True,
        metavar="TEXT",
        help="what was investigated (it goes onto the chain; no secrets)",
    )
    p.add_argument(
        "--json", action="store_true", help='one JSON object {"acknowledged", "seq", "file"}'
    )
    add_location(p)
    p.set_defaults(func=lambda args: _acknowledge(args, config_path))
    _register_checkpoint(asub, add_location, config_path)


def _register_checkpoint(asub: Any, add_location: AddLocation, config_path: ConfigPath) -> None:
    p = asub.add_parser(
        "checkpoint",
        help="anchor the chain's tip in the HSM now (rollback detection; [audit] anchor_hsm)",
        description=(
            "Write a checkpoint (seq, MAC of the newest record, time), MACed by the anchor key "
            "inside the HSM, as a token object. The workers write one every [audit] "
            "checkpoint_interval_s; audit verify fails when the files end before the newest one. "
            "Exit 1 if the log is older than the newest checkpoint (a rollback: recorded as a gap)."
        ),
    )
    p.add_argument(
        "--create-key",
        action="store_true",
        help="first generate the anchor key inside the HSM if it is missing (sensitive, "
        "not extractable; label [audit] anchor_key_label)",
    )
    p.add_argument(
        "--json", action="store_true", help='one JSON object {"created_key", "seq", "time"}'
    )
    add_location(p)
    p.set_defaults(func=lambda args: _checkpoint(args, config_path))


def _checkpoint(args: argparse.Namespace, config_path: ConfigPath) -> int:
    from xksproxy.observe.audit import main_checkpoint

    return int(
        main_checkpoint(
            config_path=_location(args, config_path), create_key=args.create_key, json_out=args.json
        )
    )


def _location(args: argparse.Namespace, config_path: ConfigPath) -> Path | None:
    if args.config is None and args.state_dir is None:
        return None  # the audit module finds the configuration itself ($XKSPROXY_CONFIG, ...)
    return config_path(args)


def _verify(args: argparse.Namespace, config_path: ConfigPath) -> int:
    from xksproxy.observe.audit import main_verify

    return int(
        main_verify(
            list(args.files),
            config_path=_location(args, config_path),
            allow_partial=args.allow_partial,
            json_out=args.json,
        )
    )


def _acknowledge(args: argparse.Namespace, config_path: ConfigPath) -> int:
    from xksproxy.observe.audit import main_acknowledge

    return int(
        main_acknowledge(args.reason, config_path=_location(args, config_path), json_out=args.json)
    )
