"""Key custody commands: rotation, lifecycle transitions, scheduled destruction (the CLI's work).

Why here and not in the proxy: state changes are operator acts, made against the HSM (where the
state lives, :mod:`hsm.custody`), checked against the one state machine
(:mod:`xksproxy.keys.lifecycle`) and written to the audit log with the operator's reason.  A
running proxy picks the change up by itself within ``[custody] state_cache_s`` (<= 5 s).

Each function returns an exit code (0 ok, 1 runtime failure, 2 usage error) and prints what it
did; refusals raise :class:`CustodyError` with a message that says what is allowed.  ``ID`` is the
key's HSM label (as for ``keys create``/``delete``); version objects are labelled by
:func:`xksproxy.keys.resolver.version_label`.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hsm import custody
from hsm.errors import KeyNotFound
from hsm.types import HsmConfig
from xksproxy.config import Config, valid_key_id
from xksproxy.keys import lifecycle
from xksproxy.keys.custody_doc import (
    CustodyDocument,
    DocumentError,
    default_document,
    format_time,
    parse_document,
)
from xksproxy.keys.resolver import version_label
from xksproxy.observe.audit import append_event
from xksproxy.observe.audit.writer import event_record
from xksproxy.xks.protocol import ordered_key_usage

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class CustodyError(Exception):
    """An expected refusal: print ``message``, exit with ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Context:
    """What every command needs: the config (audit settings), the token, who and when."""

    config: Config
    hsm: HsmConfig
    operator: str
    now: datetime
    out: Callable[[str], None] = print
    others: tuple[HsmConfig, ...] = ()
    """The other members of ``hsm``'s backend (issue 13): they hold the same keys, versions
    and lifecycle documents, so every change made on ``hsm`` is made on them too."""

    @property
    def members(self) -> tuple[HsmConfig, ...]:
        return (self.hsm, *self.others)


def make_context(config: Config, hsm: HsmConfig, now: datetime | None = None) -> Context:
    others = tuple(m for m in config.members(config.backend_of(hsm.name)) if m.name != hsm.name)
    return Context(config, hsm, _operator(), now or datetime.now(UTC), others=others)


def _write_document(ctx: Context, key_id: str, value: bytes) -> None:
    """The lifecycle document on every member (a state no member disagrees on)."""
    for member in ctx.members:
        custody.write_document(member, key_id, value)


def _destroy_keys(ctx: Context, labels: list[str]) -> None:
    for member in ctx.members:
        custody.destroy_keys(member, labels)


def _create_version(ctx: Context, key_id: str, label: str, like: str) -> None:
    """A new version key inside the HSM; on a multi-member backend created replicable on one
    member and copied to the others by the replication ceremony (wrapped under a transport key
    generated inside each target, never in the clear)."""
    if not ctx.others:
        custody.create_version_key(ctx.hsm, label, like=like)
        return
    from hsm.replicate import replicate
    from xksproxy.admin import replicate_cli

    try:
        pin = replicate_cli.so_pin(ctx.config, ctx.hsm.name, None)
    except replicate_cli.UsageError as exc:
        raise CustodyError(str(exc), EXIT_USAGE) from None
    custody.create_version_key(ctx.hsm, label, like=like, replicable=True)
    try:
        for member in ctx.others:
            report = replicate(ctx.hsm, member, source_so_pin=pin, ids=[key_id])
            if label not in report.copied and label not in report.present:
                raise CustodyError(
                    f"replicating {label} to {member.name} failed: "
                    + ("; ".join(report.problems) or "not copied")
                )
    except BaseException:
        _destroy_keys(ctx, [label])  # no member keeps a version the others lack
        raise


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


# --------------------------------------------------------------------------- document access


def _check_id(key_id: str) -> None:
    if not valid_key_id(key_id):
        raise CustodyError(
            f"invalid key id {key_id!r}: use 1-128 characters of A-Z a-z 0-9 . - _", EXIT_USAGE
        )


def load(ctx: Context, key_id: str) -> CustodyDocument:
    """The key's document (the default one if it has none); the key must exist."""
    _check_id(key_id)
    raw = custody.read_document(ctx.hsm, key_id)
    if raw is None:
        try:
            custody.key_info(ctx.hsm, key_id)
        except KeyNotFound:
            raise CustodyError(
                f"no key labelled {key_id!r} on token {ctx.hsm.token_label!r}"
            ) from None
        return default_document(key_id)
    try:
        return parse_document(raw, key_id)
    except DocumentError as exc:
        raise CustodyError(f"the lifecycle object of key {key_id} is not valid: {exc}") from None


def _audit(
    ctx: Context, key_id: str, event: str, before: str, after: str, reason: str, **extra: object
) -> None:
    """One audit record for one transition, on the same chain as the proxies' records."""
    cfg = ctx.config.audit
    if cfg.file is None or cfg.key is None:
        print(
            "xksproxy: warning: [audit] is off: this transition is recorded only in the key's "
            "own history",
            file=sys.stderr,
        )
        return
    fields = {
        "keyId": key_id,
        "token": ctx.hsm.name,
        "fromState": before,
        "toState": after,
        "reason": reason,
        "operator": ctx.operator,
        "outcome": "ok",
        **extra,
    }
    try:
        # The one way another process puts a record on the workers' chain: written now, under
        # the same lock and cut detection, and an error when it could not be (never silent).
        append_event(cfg.file, cfg.key, f"keys-{event}", fields)
    except OSError as exc:
        raise CustodyError(
            f"key {key_id}: {before} -> {after} is in force in the HSM, but its audit record "
            f"could not be written ({exc.strerror or exc}); fix the audit log's disk and record "
            "it by hand"
        ) from None


def check_reason(reason: str) -> None:
    """Refuse a ``--reason`` the audit record could not carry, before anything changes."""
    try:
        event_record("keys-check", {"reason": reason})
    except ValueError:
        raise CustodyError(
            "--reason: use at most 1024 printable ASCII characters", EXIT_USAGE
        ) from None


def transition(
    ctx: Context,
    key_id: str,
    command: str,
    *,
    reason: str,
    at: datetime | None = None,
    days: int | None = None,
) -> int:
    """Apply one lifecycle command to the key, store it in the HSM, audit it."""
    check_reason(reason)
    doc = load(ctx, key_id)
    try:
        new = lifecycle.apply(
            doc, command, now=ctx.now, reason=reason, operator=ctx.operator, at=at, days=days
        )
    except lifecycle.TransitionRefused as exc:
        raise CustodyError(str(exc)) from None
    _write_document(ctx, key_id, new.to_bytes())
    entry = new.history[-1]
    _audit(ctx, key_id, command, entry.from_state, entry.to_state, reason)
    when = ""
    if command == "schedule-destruction":
        when = f", destroyed after {format_time(new.destruction_date)}"
    elif command == "activate" and new.activation_date is not None:
        when = f", active from {format_time(new.activation_date)}"
    elif command == "deactivate" and at is not None and new.expiry_date is not None:
        when = f", deactivated from {format_time(new.expiry_date)}"
    ctx.out(f"key {key_id}: {entry.from_state} -> {entry.to_state} ({command}{when})")
    return EXIT_OK


def rotate(ctx: Context, key_id: str, *, reason: str) -> int:
    """Generate the next version inside the HSM and make it the one Encrypt uses."""
    check_reason(reason)
    doc = load(ctx, key_id)
    try:
        new = lifecycle.apply(doc, "rotate", now=ctx.now, reason=reason, operator=ctx.operator)
    except lifecycle.TransitionRefused as exc:
        raise CustodyError(str(exc)) from None
    number = new.newest.version
    label = version_label(key_id, number)
    # An object with this label that the document does not list is left over from a rotation
    # interrupted before its document was written: it never encrypted anything.
    _destroy_keys(ctx, [label])
    _create_version(ctx, key_id, label, like=version_label(key_id, doc.newest.version))
    _write_document(ctx, key_id, new.to_bytes())
    state = new.history[-1].to_state
    _audit(ctx, key_id, "rotate", state, state, reason, keyVersion=number)
    ctx.out(f"key {key_id}: rotated to version {number}")
    return EXIT_OK


def destroy(ctx: Context, key_id: str, doc: CustodyDocument, *, reason: str) -> None:
    """Remove every version object and then the companion object (the key is then 404).

    The document first says ``destroyed`` so an interruption leaves a key that answers 404
    and that the next ``destroy-due`` finishes.
    """
    check_reason(reason)
    before = doc.state
    if doc.state != "destroyed":
        done = lifecycle.apply(doc, "destroy", now=ctx.now, reason=reason, operator=ctx.operator)
        _write_document(ctx, key_id, done.to_bytes())
    labels = [version_label(key_id, v.version) for v in doc.versions]
    _destroy_keys(ctx, sorted(labels, reverse=True))
    for member in ctx.members:
        custody.delete_document(member, key_id)
    _audit(ctx, key_id, "destroy", before, "destroyed", reason)


def forget(cfg: HsmConfig, key_id: str) -> list[str]:
    """After ``keys delete ID``: remove the key's other version objects and its companion object,
    so a later key created with the same label does not inherit old versions or state.  Returns
    the version labels removed."""
    raw = custody.read_document(cfg, key_id)
    if raw is None:
        return []
    try:
        numbers = [v.version for v in parse_document(raw, key_id).versions]
    except DocumentError:
        numbers = []
    removed = custody.destroy_keys(cfg, [version_label(key_id, n) for n in numbers if n])
    custody.delete_document(cfg, key_id)
    return removed


def _due_documents(ctx: Context) -> list[CustodyDocument]:
    docs = []
    for label, raw in sorted(custody.list_documents(ctx.hsm).items()):
        try:
            docs.append(parse_document(raw, label))
        except DocumentError as exc:
            print(
                f"xksproxy: warning: key {label}: lifecycle object not valid: {exc}",
                file=sys.stderr,
            )
    return docs


def destroy_due(ctx: Context, *, reason: str, as_json: bool) -> int:
    destroyed = []
    for doc in _due_documents(ctx):
        if lifecycle.destruction_due(doc, ctx.now):
            destroy(ctx, doc.key, doc, reason=reason)
            destroyed.append(doc.key)
            if not as_json:
                ctx.out(f"key {doc.key}: destroyed (all versions removed from the HSM)")
    if as_json:
        ctx.out(json.dumps({"destroyed": destroyed}))
    elif not destroyed:
        ctx.out("no key is due for destruction")
    return EXIT_OK


def rotate_due(ctx: Context, *, reason: str, as_json: bool) -> int:
    rotated: list[dict[str, Any]] = []
    quiet = dataclasses.replace(ctx, out=lambda _line: None)  # keeps the backend's members
    for doc in _due_documents(ctx):
        if lifecycle.rotation_due(doc, ctx.now):
            rotate(quiet, doc.key, reason=reason)
            number = doc.newest.version + 1
            rotated.append({"id": doc.key, "version": number})
            if not as_json:
                ctx.out(f"key {doc.key}: rotated to version {number}")
    if as_json:
        ctx.out(json.dumps({"rotated": rotated}))
    elif not rotated:
        ctx.out("no key is due for rotation")
    return EXIT_OK


# --------------------------------------------------------------------------- reports


def _versions(doc: CustodyDocument) -> list[dict[str, Any]]:
    return [
        {
            "version": v.version,
            "created": format_time(v.created),
            "state": v.state,
        }
        for v in doc.versions
    ]


def versions(ctx: Context, key_id: str, *, as_json: bool) -> int:
    doc = load(ctx, key_id)
    rows = _versions(doc)
    if as_json:
        ctx.out(json.dumps(rows))
        return EXIT_OK
    ctx.out(f"{'VERSION':<8} {'STATE':<8} CREATED")
    for row in rows:
        ctx.out(f"{row['version']:<8} {row['state']:<8} {row['created'] or '(before versions)'}")
    return EXIT_OK


def show_document(ctx: Context, doc: CustodyDocument) -> dict[str, Any]:
    """The stable ``keys show --json`` object (documented in ARCHITECTURE.md)."""
    state = lifecycle.effective_state(doc, ctx.now)
    answer = lifecycle.ANSWERS[state]
    usage = custody.key_info(ctx.hsm, version_label(doc.key, doc.newest.version)).usage
    if answer.decrypt_only:
        usage = usage & {"DECRYPT"}
    return {
        "id": doc.key,
        "hsm": ctx.hsm.name,
        "state": state,
        "key_status": answer.key_status,
        "key_usage": ordered_key_usage(usage),
        "encrypt_version": (doc.newest_active.version if doc.newest_active else None),
        "activation_date": format_time(doc.activation_date),
        "expiry_date": format_time(doc.expiry_date),
        "destruction_date": format_time(doc.destruction_date),
        "rotate_after_days": doc.rotate_after_days,
        "versions": _versions(doc),
        "allowed": lifecycle.allowed_from(state),
        "history": [t.to_json() for t in doc.history],
    }


def show(ctx: Context, key_id: str, *, as_json: bool) -> int:
    report = show_document(ctx, load(ctx, key_id))
    if as_json:
        ctx.out(json.dumps(report))
        return EXIT_OK
    ctx.out(f"key {report['id']} on {report['hsm']}: {report['state']}")
    ctx.out(f"  keyStatus {report['key_status']}, keyUsage {', '.join(report['key_usage'])}")
    ctx.out(f"  versions: {len(report['versions'])} (Encrypt uses {report['encrypt_version']})")
    for name in ("activation_date", "expiry_date", "destruction_date", "rotate_after_days"):
        if report[name] is not None:
            ctx.out(f"  {name.replace('_', ' ')}: {report[name]}")
    ctx.out(f"  allowed: {', '.join(report['allowed']) or 'none'}")
    for t in report["history"][-5:]:
        ctx.out(
            f"  {t['time']} {t['command']}: {t['from']} -> {t['to']} by {t['operator']}"
            f" ({t['reason'] or 'no reason given'})"
        )
    return EXIT_OK
