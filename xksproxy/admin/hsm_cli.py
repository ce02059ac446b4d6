"""`xksproxy hsm status [--json] | drain NAME | undrain NAME`: HSM members of the running proxy.

The commands talk to the running proxy through its owner-only control socket
(:mod:`xksproxy.runtime.control`, ``<config dir>/control/control.sock``); they never open the HSM
themselves. Exit codes: 0 done, 1 the proxy refused or did not finish (message says why, e.g. a
probe failed on undrain, or no proxy is running), 2 usage or configuration error.

``status --json`` prints one JSON array, one object per ``[[hsm]]`` member (stable keys):
``member``, ``backend``, ``drained`` (operator drain in force), ``state`` (``active`` /
``failed`` / ``drained`` as every worker sees it, ``mixed`` if workers differ, ``unknown`` with
no worker reporting), ``health`` (ACTIVE / DEGRADED / UNAVAILABLE likewise) and ``workers``
(per worker: ``pid``, ``state``, ``health``, ``outstanding``, ``calls``, ``errors``,
``failovers``, ``last_error``, and ``note`` when a drain/undrain could not be applied).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def register(sub: Any, add_location: Any) -> None:
    """Add the ``hsm`` command group to the top-level subparsers ``sub``."""
    hsm = sub.add_parser(
        "hsm", help="HSM members of the running proxy: status, drain, undrain (maintenance)"
    )
    hsub = hsm.add_subparsers(dest="hsm_command", metavar="ACTION", required=True)
    p = hsub.add_parser("status", help="every member's state as the running proxy sees it")
    p.add_argument("--json", action="store_true", help="machine-readable output (one array)")
    p.set_defaults(func=cmd_status)
    p = hsub.add_parser(
        "drain",
        help="take a member out of service on every worker (requests in flight finish)",
    )
    p.add_argument("name", metavar="NAME", help="[[hsm]] member name")
    p.set_defaults(func=cmd_drain)
    p = hsub.add_parser("undrain", help="put a drained member back after its probe passes")
    p.add_argument("name", metavar="NAME", help="[[hsm]] member name")
    p.set_defaults(func=cmd_undrain)
    for p in hsub.choices.values():
        add_location(p)


def _config_path(args: argparse.Namespace) -> Path:
    from xksproxy.admin.cli import _config_path as resolve

    return resolve(args)


def _ask(args: argparse.Namespace, message: dict[str, Any]) -> dict[str, Any] | None:
    from xksproxy.config import ConfigError, load_config
    from xksproxy.runtime import control

    path = _config_path(args)
    try:
        return control.request(path, message)
    except ConfigError as exc:
        print(f"xksproxy: error: {path}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except OSError as exc:
        sock = control.ControlPaths.of(load_config(path)).socket
        print(
            f"xksproxy: error: no running proxy answers on {sock} ({exc.strerror or exc}); "
            "start it with `xksproxy serve` using the same --config/--state-dir",
            file=sys.stderr,
        )
        return None


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'MEMBER':<20} {'BACKEND':<16} {'STATE':<9} {'HEALTH':<12} WORKERS"]
    for r in rows:
        drained = " (drained by operator)" if r["drained"] else ""
        lines.append(
            f"{r['member']:<20} {r['backend']:<16} {r['state']:<9} {r['health']:<12} "
            f"{len(r['workers'])}{drained}"
        )
        for w in r["workers"]:
            if w.get("last_error") or w.get("note"):
                lines.append(f"    pid {w['pid']}: {w.get('note') or w.get('last_error')}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    reply = _ask(args, {"command": "status"})
    if reply is None:
        return EXIT_FAILURE
    if not reply.get("ok"):
        print(f"xksproxy: error: {reply.get('error')}", file=sys.stderr)
        return EXIT_FAILURE
    rows = reply.get("members", [])
    print(json.dumps(rows) if args.json else _table(rows), flush=True)
    return EXIT_OK


def _change(args: argparse.Namespace, command: str, done: str) -> int:
    reply = _ask(args, {"command": command, "member": args.name})
    if reply is None:
        return EXIT_FAILURE
    if not reply.get("ok"):
        error = str(reply.get("error"))
        print(f"xksproxy: error: {error}", file=sys.stderr)
        return EXIT_USAGE if error.startswith("no [[hsm]] member") else EXIT_FAILURE
    print(f"{args.name}: {done}", flush=True)
    return EXIT_OK


def cmd_drain(args: argparse.Namespace) -> int:
    return _change(args, "drain", "drained on every worker (requests in flight finish there)")


def cmd_undrain(args: argparse.Namespace) -> int:
    return _change(args, "undrain", "probe passed, back in service on every worker")
