"""``xksproxy keys`` custody subcommands: argument parsing only (the work is in custody_ops).

Registered by :func:`xksproxy.admin.cli.build_parser` under ``keys`` with :func:`register`;
cli.py adds ``--config/--state-dir`` and ``--hsm`` to every ``keys`` subcommand and gives us the
way to open the configuration and the token (``target``), so its error handling stays in one
place.  Exit codes: 0 ok, 1 refused or failed (the message says which transitions are allowed),
2 usage error (bad date, days out of range, invalid id).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from xksproxy.keys import lifecycle

if TYPE_CHECKING:
    from datetime import datetime

    from hsm.types import HsmConfig
    from xksproxy.config import Config

Target = Callable[[argparse.Namespace], AbstractContextManager[tuple["Config", "HsmConfig"]]]

_SIMPLE = {
    "suspend": "suspend the key: DISABLED, Encrypt/Decrypt refused (resume undoes it)",
    "resume": "resume a suspended key (active again)",
    "mark-compromised": "mark the key compromised: Decrypt only, audited as compromised",
    "cancel-destruction": "cancel a scheduled destruction (back to the state before)",
}


def _date(text: str) -> datetime:
    from xksproxy.keys.custody_doc import parse_time

    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 date or time: {text!r} (e.g. 2027-01-31 or 2027-01-31T09:00:00Z)"
        ) from None


def _days(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None


def register(ksub: Any, target: Target) -> None:
    """Add the custody subcommands to the ``keys`` subparsers ``ksub``."""

    def add(name: str, help_text: str, run: Callable[..., int], *, with_id: bool = True) -> Any:
        p = ksub.add_parser(name, help=help_text, description=help_text)
        if with_id:
            p.add_argument("id", metavar="ID", help="the key's id (= its HSM label)")
        p.add_argument(
            "--reason", default="", metavar="TEXT", help="why (written to the audit log)"
        )
        p.set_defaults(func=lambda args: _run(args, target, run))
        return p

    p = add(
        "rotate",
        "create the next key version inside the HSM; Encrypt uses it from now on",
        lambda ops, ctx, a: ops.rotate(ctx, a.id, reason=a.reason),
    )
    p = add(
        "versions",
        "list the key's versions with creation time and state",
        lambda ops, ctx, a: ops.versions(ctx, a.id, as_json=a.json),
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add(
        "show",
        "show the key's lifecycle state, dates, versions and recent history",
        lambda ops, ctx, a: ops.show(ctx, a.id, as_json=a.json),
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add(
        "activate",
        "activate a pre-active key (now, or --at DATE; --at a future DATE on an active key "
        "holds it back until then)",
        lambda ops, ctx, a: ops.transition(ctx, a.id, "activate", reason=a.reason, at=a.at),
    )
    p.add_argument("--at", type=_date, metavar="DATE", help="ISO 8601 date/time (UTC)")
    for name, text in _SIMPLE.items():
        add(name, text, _simple(name))
    p = add(
        "deactivate",
        "deactivate the key (now, or when --at DATE passes): Decrypt only, Encrypt refused",
        lambda ops, ctx, a: ops.transition(ctx, a.id, "deactivate", reason=a.reason, at=a.at),
    )
    p.add_argument("--at", type=_date, metavar="DATE", help="ISO 8601 date/time (UTC)")
    p = add(
        "schedule-destruction",
        f"destroy the key after a waiting period of {lifecycle.MIN_DESTRUCTION_DAYS}-"
        f"{lifecycle.MAX_DESTRUCTION_DAYS} days (DISABLED meanwhile; keys destroy-due does it)",
        _schedule,
    )
    p.add_argument("--days", type=_days, required=True, metavar="N", help="waiting period")
    p.add_argument(
        "--i-understand",
        action="store_true",
        help=f"allow fewer than {lifecycle.MIN_DESTRUCTION_DAYS} days (tests only)",
    )
    p = add(
        "set-cryptoperiod",
        "rotate the key automatically (keys rotate-due) once its newest version is N days old",
        lambda ops, ctx, a: ops.transition(
            ctx, a.id, "set-cryptoperiod", reason=a.reason, days=a.days
        ),
    )
    p.add_argument("--days", type=_days, required=True, metavar="N", help="0 = never")
    p = add(
        "rotate-due",
        "rotate every key whose cryptoperiod (set-cryptoperiod) has passed (for a timer)",
        lambda ops, ctx, a: ops.rotate_due(
            ctx, reason=a.reason or "cryptoperiod passed", as_json=a.json
        ),
        with_id=False,
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add(
        "destroy-due",
        "destroy every key whose destruction date has passed: all versions (for a timer)",
        lambda ops, ctx, a: ops.destroy_due(
            ctx, reason=a.reason or "waiting period over", as_json=a.json
        ),
        with_id=False,
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _simple(command: str) -> Callable[..., int]:
    return lambda ops, ctx, a: ops.transition(ctx, a.id, command, reason=a.reason)


def _schedule(ops: Any, ctx: Any, a: argparse.Namespace) -> int:
    low, high = lifecycle.MIN_DESTRUCTION_DAYS, lifecycle.MAX_DESTRUCTION_DAYS
    if not (low <= a.days <= high or (a.i_understand and 0 <= a.days <= high)):
        raise ops.CustodyError(
            f"--days must be {low}..{high} (fewer only with --i-understand, for tests)",
            ops.EXIT_USAGE,
        )
    return int(ops.transition(ctx, a.id, "schedule-destruction", reason=a.reason, days=a.days))


def _run(args: argparse.Namespace, target: Target, run: Callable[..., int]) -> int:
    from xksproxy.admin import custody_ops as ops

    with target(args) as (config, hsm_cfg):
        ctx = ops.make_context(config, hsm_cfg)
        try:
            return int(run(ops, ctx, args))
        except ops.CustodyError as exc:
            print(f"xksproxy: error: {exc.message}", file=sys.stderr, flush=True)
            return exc.code
