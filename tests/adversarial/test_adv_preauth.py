"""Issue 17 item 5: anonymous callers must not use up what KMS needs.

Both attacks of the review, reproduced against one real server (loopback, one worker) whose demo
store has a small quota and whose in-flight limit is small: an unsigned flood used to drain the
store's quota (signed traffic then got 429), and trickled bodies used to hold the in-flight slots
(legitimate requests then got 429). The attacker connects from 127.0.0.2 (still loopback), the
legitimate caller from 127.0.0.1, so the per-client unauthenticated budget tells them apart.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from adversarial_helpers import READ_TIMEOUT_S, Target, assert_xks_error, read_answer
from conformance_helpers import metadata_body
from server_harness import copy_config, init_state, start_server

QUOTA_BURST = 15  # both tests' signed requests together stay below it, in either order
SIGNED = 5
FLOOD = 100  # unsigned requests: many times the quota's burst
PER_CLIENT = 8  # [server] max_unauthenticated_per_client for this server
SLOW = 30  # trickled bodies: more than max_in_flight (16) below
ATTACKER = "127.0.0.2"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    state = init_state(tmp_path_factory.mktemp("preauth-state"))
    config = copy_config(
        state,
        "preauth.toml",
        {
            ("server", "max_in_flight"): "16",
            ("server", "max_unauthenticated_per_client"): str(PER_CLIENT),
            ("keystore.quota", "rate"): "1",
            ("keystore.quota", "burst"): str(QUOTA_BURST),
            ("logging", "request_log"): "true",
        },
    )
    server = start_server(state, config=config, log_name="preauth")
    try:
        yield Target(server=server, cred=state.demo.creds[0], prefix=state.demo.prefix)
    finally:
        server.stop()


def _metadata(target: Target) -> tuple[str, bytes]:
    return target.key_path("demo", "metadata"), json.dumps(metadata_body()).encode()


def _attacker_socket(target: Target) -> socket.socket:
    return socket.create_connection(
        ("127.0.0.1", target.port), timeout=READ_TIMEOUT_S, source_address=(ATTACKER, 0)
    )


def test_unsigned_flood_does_not_use_up_the_store_quota(guarded: Target) -> None:
    path, _ = _metadata(guarded)
    unsigned = (
        f"POST {path} HTTP/1.1\r\nHost: {guarded.server.host}\r\nContent-Type: application/json"
        "\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    ).encode()
    for i in range(FLOOD):
        with _attacker_socket(guarded) as s:
            s.sendall(unsigned)
            answer = read_answer(s, what=f"unsigned request {i}")
        assert_xks_error(answer, 401, "AuthenticationFailedException")
    path, body = _metadata(guarded)
    statuses = [guarded.post(path, body).status for _ in range(SIGNED)]
    assert statuses == [200] * SIGNED  # before the fix: 429 once the flood had drained the bucket


def test_trickled_bodies_do_not_take_the_authenticated_slots(guarded: Target) -> None:
    path, body = _metadata(guarded)
    head = guarded.signed_head(path, body) + f"Content-Length: {len(body)}\r\n\r\n".encode()
    slow: list[socket.socket] = []
    try:
        for _ in range(SLOW):
            s = _attacker_socket(guarded)
            s.sendall(head + body[:10])  # and never the rest
            slow.append(s)
        # the legitimate caller, while every trickling connection is still open
        statuses = [guarded.post(path, body).status for _ in range(SIGNED)]
        assert statuses == [200] * SIGNED  # before the fix: 429 (in-flight slots all taken)
        # The attacker held at most PER_CLIENT bodies at a time; each is cut off by the body
        # time bound (400), the others were refused at once (429). (A slot freed by the time
        # bound may be taken again by a late connection on a loaded machine: hence ">=".)
        answers = [read_answer(s, what=f"slow connection {i}") for i, s in enumerate(slow)]
        statuses = [a.status for a in answers]
        assert set(statuses) == {400, 429}, statuses
        assert statuses.count(429) >= SLOW - 2 * PER_CLIENT, statuses
        for a in answers:
            assert_xks_error(
                a, a.status, "ValidationException" if a.status == 400 else "ThrottlingException"
            )
    finally:
        for s in slow:
            s.close()
