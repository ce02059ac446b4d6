"""The lifecycle document kept in the HSM next to each external key (``hsm.custody``).

Why a document in the HSM: every proxy in front of the token must agree on a key's versions and
state, and an HSM backup (or the HA replication ceremony) must carry them; no local file decides.
This module owns the document's JSON schema; :mod:`xksproxy.keys.lifecycle` owns what may change
in it, :mod:`hsm.custody` where it is stored.

Schema version 1 (UTF-8 JSON object, keys in this order, times ISO 8601 UTC ``...Z`` or null)::

    {"schema": 1,
     "key": "demo",                          # the version-0 label (= CKA_LABEL of the object)
     "state": "active",                      # stored state, see lifecycle.STORED_STATES
     "activation_date": null,                # in the future: the key is pre-active until then
     "expiry_date": null,                    # passed: the key is deactivated
     "destruction_date": null,               # pending destruction: destroyed by destroy-due after
     "state_before_destruction": null,       # what cancel-destruction goes back to
     "rotate_after_days": null,              # cryptoperiod for `keys rotate-due` (null: never)
     "tracked_since": "2026-12-07T15:00:00Z",# when the document was first written
     "versions": [{"version": 0, "created": null, "state": "active"}, ...],
     "history": [{"time": ..., "from": ..., "to": ..., "command": ..., "reason": ...,
                  "operator": ...}, ...]}   # the newest HISTORY_LIMIT transitions

A key without a document is :func:`default_document`: version 0 (created unknown), active.  A
document that does not parse, or of a schema this proxy does not know, is refused
(:class:`DocumentError`): the service answers 500 for that key rather than guess its state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

SCHEMA = 1
HISTORY_LIMIT = 32
"""Transitions kept in the document (the audit log keeps all of them)."""
VERSION_STATES = ("active", "retired")
"""A version is ``active`` (the newest, used by Encrypt) or ``retired`` (decrypt only)."""


class DocumentError(ValueError):
    """The companion document is not a valid schema-1 document."""


@dataclass(frozen=True, slots=True)
class Version:
    version: int
    created: datetime | None
    state: str = "active"


@dataclass(frozen=True, slots=True)
class Transition:
    time: datetime
    from_state: str
    to_state: str
    command: str
    reason: str
    operator: str

    def to_json(self) -> dict[str, str | None]:
        """The history entry as the document and ``keys show --json`` spell it."""
        return {
            "time": format_time(self.time),
            "from": self.from_state,
            "to": self.to_state,
            "command": self.command,
            "reason": self.reason,
            "operator": self.operator,
        }


@dataclass(frozen=True, slots=True)
class CustodyDocument:
    key: str
    state: str = "active"
    activation_date: datetime | None = None
    expiry_date: datetime | None = None
    destruction_date: datetime | None = None
    state_before_destruction: str | None = None
    rotate_after_days: int | None = None
    tracked_since: datetime | None = None
    versions: tuple[Version, ...] = (Version(0, None),)
    history: tuple[Transition, ...] = field(default=())

    # -- reading --------------------------------------------------------------------------------
    @property
    def newest(self) -> Version:
        return max(self.versions, key=lambda v: v.version)

    @property
    def newest_active(self) -> Version | None:
        active = [v for v in self.versions if v.state == "active"]
        return max(active, key=lambda v: v.version) if active else None

    def version(self, number: int) -> Version | None:
        for v in self.versions:
            if v.version == number:
                return v
        return None

    def with_transition(self, entry: Transition, **changes: Any) -> CustodyDocument:
        """A copy with ``changes`` applied and ``entry`` appended to the bounded history."""
        history = (*self.history, entry)[-HISTORY_LIMIT:]
        return replace(self, history=history, **changes)

    # -- bytes ------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        doc = {
            "schema": SCHEMA,
            "key": self.key,
            "state": self.state,
            "activation_date": format_time(self.activation_date),
            "expiry_date": format_time(self.expiry_date),
            "destruction_date": format_time(self.destruction_date),
            "state_before_destruction": self.state_before_destruction,
            "rotate_after_days": self.rotate_after_days,
            "tracked_since": format_time(self.tracked_since),
            "versions": [
                {"version": v.version, "created": format_time(v.created), "state": v.state}
                for v in sorted(self.versions, key=lambda v: v.version)
            ],
            "history": [t.to_json() for t in self.history],
        }
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode()


def default_document(label: str) -> CustodyDocument:
    """What a key without a companion object is: version 0, active, nothing scheduled."""
    return CustodyDocument(key=label)


def format_time(t: datetime | None) -> str | None:
    if t is None:
        return None
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """ISO 8601 date or date-time; naive values are UTC."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _opt_time(doc: dict[str, Any], name: str) -> datetime | None:
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise DocumentError(f"{name} must be a time string or null")
    try:
        return parse_time(value)
    except ValueError:
        raise DocumentError(f"{name} is not an ISO 8601 time") from None


def _opt_str(doc: dict[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is not None and not isinstance(value, str):
        raise DocumentError(f"{name} must be a string or null")
    return value


def parse_document(data: bytes, label: str) -> CustodyDocument:
    """The document stored for ``label``; :class:`DocumentError` when it is not valid."""
    from xksproxy.keys.lifecycle import STORED_STATES  # the state names have one home

    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DocumentError("not JSON") from None
    if not isinstance(doc, dict):
        raise DocumentError("not a JSON object")
    if doc.get("schema") != SCHEMA:
        raise DocumentError(f"unknown schema {doc.get('schema')!r} (this proxy reads {SCHEMA})")
    if doc.get("key") != label:
        raise DocumentError(f"document is for key {doc.get('key')!r}, not {label!r}")
    state = doc.get("state")
    if state not in STORED_STATES:
        raise DocumentError(f"unknown state {state!r}")
    before = _opt_str(doc, "state_before_destruction")
    if before is not None and before not in STORED_STATES:
        raise DocumentError(f"unknown state_before_destruction {before!r}")
    rotate = doc.get("rotate_after_days")
    if rotate is not None and (type(rotate) is not int or rotate < 1):
        raise DocumentError("rotate_after_days must be a positive integer or null")
    versions_raw = doc.get("versions")
    if not isinstance(versions_raw, list) or not versions_raw:
        raise DocumentError("versions must be a non-empty list")
    versions: list[Version] = []
    for item in versions_raw:
        if not isinstance(item, dict):
            raise DocumentError("each version must be an object")
        number = item.get("version")
        if type(number) is not int or number < 0:
            raise DocumentError("version numbers must be integers >= 0")
        vstate = item.get("state")
        if vstate not in VERSION_STATES:
            raise DocumentError(f"unknown version state {vstate!r}")
        versions.append(Version(number, _opt_time(item, "created"), str(vstate)))
    if len({v.version for v in versions}) != len(versions):
        raise DocumentError("duplicate version numbers")
    if 0 not in {v.version for v in versions}:
        raise DocumentError("version 0 is missing")
    history: list[Transition] = []
    raw_history = doc.get("history", [])
    if not isinstance(raw_history, list):
        raise DocumentError("history must be a list")
    for item in raw_history[-HISTORY_LIMIT:]:
        if not isinstance(item, dict):
            raise DocumentError("each history entry must be an object")
        when = _opt_time(item, "time")
        if when is None:
            raise DocumentError("history entries need a time")
        history.append(
            Transition(
                when,
                _opt_str(item, "from") or "",
                _opt_str(item, "to") or "",
                _opt_str(item, "command") or "",
                _opt_str(item, "reason") or "",
                _opt_str(item, "operator") or "",
            )
        )
    return CustodyDocument(
        key=label,
        state=str(state),
        activation_date=_opt_time(doc, "activation_date"),
        expiry_date=_opt_time(doc, "expiry_date"),
        destruction_date=_opt_time(doc, "destruction_date"),
        state_before_destruction=before,
        rotate_after_days=rotate,
        tracked_since=_opt_time(doc, "tracked_since"),
        versions=tuple(sorted(versions, key=lambda v: v.version)),
        history=tuple(history),
    )
