"""The lifecycle state machine: every command from every state, allowed or refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from xksproxy.keys import lifecycle
from xksproxy.keys.custody_doc import (
    HISTORY_LIMIT,
    CustodyDocument,
    DocumentError,
    default_document,
    parse_document,
)

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)

# The rules, restated independently of lifecycle.COMMANDS: command -> states it is allowed from.
LIVE = {"pre-active", "active", "suspended"}
EXPECTED = {
    "activate": {"pre-active", "active"},
    "suspend": {"active"},
    "resume": {"suspended"},
    "deactivate": LIVE,
    "mark-compromised": LIVE | {"deactivated"},
    "schedule-destruction": LIVE | {"deactivated", "compromised"},
    "cancel-destruction": {"pending-destruction"},
    "destroy": {"pending-destruction"},
    "rotate": LIVE,
    "set-cryptoperiod": set(lifecycle.STATES) - {"destroyed"},
}


def doc_in(state: str) -> CustodyDocument:
    """A document whose effective state at NOW is ``state``."""
    if state == "pre-active":
        return CustodyDocument(key="k", activation_date=NOW + DAY)
    if state == "pending-destruction":
        return CustodyDocument(
            key="k",
            state=state,
            destruction_date=NOW + 7 * DAY,
            state_before_destruction="suspended",
        )
    return CustodyDocument(key="k", state=state)


def run(doc: CustodyDocument, command: str, **kw) -> CustodyDocument:
    if command == "schedule-destruction" or command == "set-cryptoperiod":
        kw.setdefault("days", 7)
    if command == "activate" and lifecycle.effective_state(doc, NOW) == "active":
        kw.setdefault("at", NOW + DAY)
    return lifecycle.apply(doc, command, now=NOW, reason="why", operator="alice", **kw)


def test_the_table_is_the_documented_one():
    assert {c: set(cmd.sources) for c, cmd in lifecycle.COMMANDS.items()} == EXPECTED


@pytest.mark.parametrize("state", lifecycle.STATES)
@pytest.mark.parametrize("command", sorted(EXPECTED))
def test_every_command_from_every_state(state, command):
    doc = doc_in(state)
    assert lifecycle.effective_state(doc, NOW) == state
    if state in EXPECTED[command]:
        new = run(doc, command)
        entry = new.history[-1]
        assert (entry.from_state, entry.command, entry.reason, entry.operator) == (
            state,
            command,
            "why",
            "alice",
        )
        assert entry.to_state == lifecycle.effective_state(new, NOW)
    else:
        with pytest.raises(lifecycle.TransitionRefused) as info:
            run(doc, command)
        message = str(info.value)
        assert f"not allowed from {state}" in message
        allowed = lifecycle.allowed_from(state)
        assert (", ".join(allowed) or "none") in message  # says what is allowed instead


@pytest.mark.parametrize(
    ("state", "command", "after"),
    [
        ("pre-active", "activate", "active"),
        ("active", "suspend", "suspended"),
        ("suspended", "resume", "active"),
        ("active", "deactivate", "deactivated"),
        ("suspended", "mark-compromised", "compromised"),
        ("compromised", "schedule-destruction", "pending-destruction"),
        ("pending-destruction", "cancel-destruction", "suspended"),  # back to the state before
        ("pending-destruction", "destroy", "destroyed"),
        ("active", "rotate", "active"),
        ("active", "activate", "pre-active"),  # --at a future date holds the key back
    ],
)
def test_where_each_transition_leads(state, command, after):
    assert lifecycle.effective_state(run(doc_in(state), command), NOW) == after


def test_dates_take_effect_by_themselves():
    held = run(doc_in("active"), "activate", at=NOW + DAY)
    assert lifecycle.effective_state(held, NOW) == "pre-active"
    assert lifecycle.effective_state(held, NOW + 2 * DAY) == "active"
    expiring = run(doc_in("active"), "deactivate", at=NOW + DAY)
    assert lifecycle.effective_state(expiring, NOW) == "active"
    assert lifecycle.effective_state(expiring, NOW + 2 * DAY) == "deactivated"


def test_schedule_and_cancel_destruction_keep_the_state_before():
    pending = run(doc_in("deactivated"), "schedule-destruction", days=10)
    assert pending.destruction_date == NOW + 10 * DAY
    assert not lifecycle.destruction_due(pending, NOW + 9 * DAY)
    assert lifecycle.destruction_due(pending, NOW + 10 * DAY)
    back = run(pending, "cancel-destruction")
    assert back.state == "deactivated" and back.destruction_date is None


def test_rotation_adds_a_version_and_retires_the_others():
    doc = default_document("k")
    for _ in range(3):
        doc = run(doc, "rotate")
    assert [(v.version, v.state) for v in doc.versions] == [
        (0, "retired"),
        (1, "retired"),
        (2, "retired"),
        (3, "active"),
    ]
    assert doc.newest_active is not None and doc.newest_active.version == 3


def test_rotation_due_follows_the_cryptoperiod():
    doc = run(run(default_document("k"), "rotate"), "set-cryptoperiod", days=30)
    assert not lifecycle.rotation_due(doc, NOW + 29 * DAY)
    assert lifecycle.rotation_due(doc, NOW + 30 * DAY)
    assert not lifecycle.rotation_due(run(doc, "mark-compromised"), NOW + 30 * DAY)
    assert not lifecycle.rotation_due(default_document("k"), NOW + 1000 * DAY)  # no cryptoperiod


def test_document_round_trip_and_bounded_history():
    doc = default_document("k")
    for i in range(HISTORY_LIMIT + 5):
        doc = run(doc, "set-cryptoperiod", days=i + 1)
    again = parse_document(doc.to_bytes(), "k")
    assert again == doc
    assert len(again.history) == HISTORY_LIMIT


V0 = '"versions": [{"version": 0, "state": "active"}]'


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[]",
        '{"schema": 2, "key": "k", "state": "active", ' + V0 + "}",
        '{"schema": 1, "key": "other", "state": "active", ' + V0 + "}",
        '{"schema": 1, "key": "k", "state": "melted", ' + V0 + "}",
        '{"schema": 1, "key": "k", "state": "active", "versions": []}',
        '{"schema": 1, "key": "k", "state": "active", '
        '"versions": [{"version": 1, "state": "active"}]}',
    ],
)
def test_invalid_documents_are_refused(raw):
    with pytest.raises(DocumentError):
        parse_document(raw.encode(), "k")


def test_a_reason_the_audit_record_cannot_carry_is_refused_up_front():
    """Checked before the HSM changes: a transition is never in force without its record."""
    from xksproxy.admin.custody_ops import CustodyError, check_reason

    check_reason("quarterly rotation, ticket SEC-1234")
    for bad in ("x" * 1025, "caf\u00e9", "two\nlines"):
        with pytest.raises(CustodyError) as refused:
            check_reason(bad)
        assert refused.value.code == 2 and "--reason" in refused.value.message
