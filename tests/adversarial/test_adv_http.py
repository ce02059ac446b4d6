"""HTTP-level abuse against a real server: framing, slow clients, methods, odd paths."""

from __future__ import annotations

import json
import socket

from adversarial_helpers import Target, assert_xks_error, read_answer
from conformance_helpers import encrypt_body

SLOW_CONNECTIONS = 300  # more than the default [server] max_in_flight (256)


def _encrypt_bytes() -> bytes:
    return json.dumps(encrypt_body(b"adversarial")).encode()


def test_trickled_bodies_do_not_lock_out_other_callers(target: Target) -> None:
    """Slowloris on the body: admission counts a request in before its body is read, so bodies
    that never finish used to hold every in-flight slot (429 for everyone, forever). The body
    must arrive within the body time bound; the slow client gets a JSON 400, others are served."""
    path = target.key_path("demo", "encrypt")
    body = _encrypt_bytes()
    head = target.signed_head(path, body) + f"Content-Length: {len(body)}\r\n\r\n".encode()
    slow: list[socket.socket] = []
    try:
        for _ in range(SLOW_CONNECTIONS):
            s = target.connect()
            s.sendall(head + body[:10])
            slow.append(s)
        # Each slow one is answered: 400 once its deadline passes (read blocks until then), or
        # 429 at once if every in-flight slot was taken when it arrived.
        names = []
        for i, s in enumerate(slow):
            answer = read_answer(s, what=f"slow connection {i}")
            name = "ValidationException" if answer.status == 400 else "ThrottlingException"
            assert_xks_error(answer, 400 if answer.status == 400 else 429, name)
            names.append(name)
        assert "ValidationException" in names
        good = target.post(path, _encrypt_bytes())
        assert good.status == 200, good.describe()
    finally:
        for s in slow:
            s.close()
