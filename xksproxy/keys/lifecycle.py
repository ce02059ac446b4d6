"""Key lifecycle: the states, what each answers to KMS, and the one state-machine table.

Why one table: the CLI checks every transition against :data:`COMMANDS`, the resolver maps every
state through :data:`ANSWERS`, and docs/tests read both; a state or a rule therefore lives here
once.  States follow NIST SP 800-57 (pre-activation, active, suspended, deactivated, compromised,
destroyed) plus KMS's "pending destruction" waiting period.

``pre-active`` is never stored: it is a stored ``active`` whose ``activation_date`` is still in
the future; likewise a stored ``active`` whose ``expiry_date`` has passed *is* ``deactivated``
(:func:`effective_state`).  Dates therefore take effect by themselves, with no command at that
moment.  ``destroyed`` is what a key whose objects are gone is (the document goes too, so the
proxy answers 404 because the HSM has no key); it appears in a document only if a destruction was
interrupted (then ``keys destroy-due`` finishes it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from xksproxy.keys.custody_doc import CustodyDocument, Transition, Version

STORED_STATES: Final = (
    "active",
    "suspended",
    "deactivated",
    "compromised",
    "pending-destruction",
    "destroyed",
)
STATES: Final = ("pre-active", *STORED_STATES)
"""Every state a key can be in, in lifecycle order."""

Outcome = Literal["ok", "InvalidStateException", "InvalidKeyUsageException", "KeyNotFoundException"]


@dataclass(frozen=True, slots=True)
class XksAnswer:
    """What KMS sees of a key in one state."""

    key_status: Literal["ENABLED", "DISABLED"] | None
    """GetKeyMetadata ``keyStatus`` (None: the key does not exist, 404)."""
    decrypt_only: bool
    """GetKeyMetadata ``keyUsage`` is reduced to DECRYPT."""
    encrypt: Outcome
    decrypt: Outcome


ANSWERS: Final[dict[str, XksAnswer]] = {
    "pre-active": XksAnswer("DISABLED", False, "InvalidStateException", "InvalidStateException"),
    "active": XksAnswer("ENABLED", False, "ok", "ok"),
    "suspended": XksAnswer("DISABLED", False, "InvalidStateException", "InvalidStateException"),
    "deactivated": XksAnswer("ENABLED", True, "InvalidKeyUsageException", "ok"),
    "compromised": XksAnswer("ENABLED", True, "InvalidKeyUsageException", "ok"),
    "pending-destruction": XksAnswer(
        "DISABLED", False, "InvalidStateException", "InvalidStateException"
    ),
    "destroyed": XksAnswer(None, False, "KeyNotFoundException", "KeyNotFoundException"),
}
"""The issue's mapping table, state -> XKS answers (the resolver applies it)."""


@dataclass(frozen=True, slots=True)
class Command:
    """One ``xksproxy keys`` command that changes a key's lifecycle document."""

    name: str
    sources: frozenset[str]
    """Effective states it may start from."""
    target: str | None
    """The stored state afterwards (None: unchanged, or computed: cancel-destruction)."""


_LIVE = frozenset({"pre-active", "active", "suspended"})
COMMANDS: Final[dict[str, Command]] = {
    c.name: c
    for c in (
        Command("activate", frozenset({"pre-active", "active"}), "active"),
        Command("suspend", frozenset({"active"}), "suspended"),
        Command("resume", frozenset({"suspended"}), "active"),
        Command("deactivate", _LIVE, "deactivated"),
        Command("mark-compromised", _LIVE | {"deactivated"}, "compromised"),
        Command(
            "schedule-destruction",
            _LIVE | {"deactivated", "compromised"},
            "pending-destruction",
        ),
        Command("cancel-destruction", frozenset({"pending-destruction"}), None),
        Command("destroy", frozenset({"pending-destruction"}), "destroyed"),
        Command("rotate", _LIVE, None),
        Command("set-cryptoperiod", frozenset(STATES) - {"destroyed"}, None),
    )
}
"""The state machine: command -> the states it is allowed from and the state it leads to."""

MIN_DESTRUCTION_DAYS: Final = 7
MAX_DESTRUCTION_DAYS: Final = 30
"""KMS's waiting period for key deletion; lower only with ``--i-understand`` (tests)."""


class TransitionRefused(Exception):
    """A command not allowed from the key's current state (the message says what is)."""


def effective_state(doc: CustodyDocument, now: datetime) -> str:
    """The state in force at ``now`` (dates applied; see the module docstring)."""
    if doc.state == "active":
        if doc.activation_date is not None and doc.activation_date > now:
            return "pre-active"
        if doc.expiry_date is not None and doc.expiry_date <= now:
            return "deactivated"
    return doc.state


def allowed_from(state: str) -> list[str]:
    """The commands allowed from ``state`` (for the refusal message and ``keys show``)."""
    return [c.name for c in COMMANDS.values() if state in c.sources and c.name != "destroy"]


def check(doc: CustodyDocument, command: str, now: datetime) -> str:
    """The effective state, if ``command`` is allowed from it; else :class:`TransitionRefused`."""
    state = effective_state(doc, now)
    if state not in COMMANDS[command].sources:
        allowed = ", ".join(allowed_from(state)) or "none"
        raise TransitionRefused(
            f"key {doc.key} is {state}: `{command}` is not allowed from {state} "
            f"(allowed from {state}: {allowed})"
        )
    return state


def apply(
    doc: CustodyDocument,
    command: str,
    *,
    now: datetime,
    reason: str,
    operator: str,
    at: datetime | None = None,
    days: int | None = None,
) -> CustodyDocument:
    """The document after ``command`` (checked against :data:`COMMANDS`), history appended.

    ``at``: activate / deactivate at a date (activate from active needs a future ``at``: the key
    is then held back, pre-active, until it); ``days``: schedule-destruction's waiting period
    (range checked by the caller, which knows about ``--i-understand``) and set-cryptoperiod's
    ``rotate_after_days`` (0 clears it).
    """
    before = check(doc, command, now)
    spec = COMMANDS[command]
    changes: dict[str, object] = {}
    after: str
    if command == "activate":
        if before == "active" and (at is None or at <= now):
            raise TransitionRefused(
                f"key {doc.key} is already active; `activate --at DATE` with a future DATE "
                "holds it back (pre-active) until then"
            )
        changes["activation_date"] = at if at is not None and at > now else None
        after = "pre-active" if at is not None and at > now else "active"
        changes["state"] = "active"
    elif command == "deactivate" and at is not None and at > now:
        changes["expiry_date"] = at
        after = before  # deactivated by the date, with no command then
    elif command == "schedule-destruction":
        if days is None:
            raise ValueError("schedule-destruction needs days")
        changes["state"] = "pending-destruction"
        changes["destruction_date"] = now + timedelta(days=days)
        changes["state_before_destruction"] = doc.state
        after = "pending-destruction"
    elif command == "cancel-destruction":
        back = doc.state_before_destruction or "active"
        changes["state"] = back
        changes["destruction_date"] = None
        changes["state_before_destruction"] = None
        after = effective_state(
            CustodyDocument(
                key=doc.key,
                state=back,
                activation_date=doc.activation_date,
                expiry_date=doc.expiry_date,
            ),
            now,
        )
    elif command == "set-cryptoperiod":
        if days is None or days < 0:
            raise ValueError("set-cryptoperiod needs days >= 0")
        changes["rotate_after_days"] = days or None
        after = before
    elif command == "rotate":
        newest = doc.newest.version
        versions = tuple(Version(v.version, v.created, "retired") for v in doc.versions)
        changes["versions"] = (*versions, Version(newest + 1, now, "active"))
        after = before
    else:
        assert spec.target is not None
        changes["state"] = spec.target
        after = spec.target
    if doc.tracked_since is None:
        changes["tracked_since"] = now
    entry = Transition(now, before, after, command, reason, operator)
    return doc.with_transition(entry, **changes)


def rotation_due(doc: CustodyDocument, now: datetime) -> bool:
    """Whether ``keys rotate-due`` rotates this key now (cryptoperiod passed, key live)."""
    if doc.rotate_after_days is None or effective_state(doc, now) not in COMMANDS["rotate"].sources:
        return False
    since = doc.newest.created or doc.tracked_since
    return since is not None and now - since >= timedelta(days=doc.rotate_after_days)


def destruction_due(doc: CustodyDocument, now: datetime) -> bool:
    """Whether ``keys destroy-due`` destroys this key now (waiting period over)."""
    if doc.state == "destroyed":
        return True  # an interrupted destruction: finish it
    return (
        doc.state == "pending-destruction"
        and doc.destruction_date is not None
        and doc.destruction_date <= now
    )
