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


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def test_chunked_body_within_the_cap_is_served(target: Target) -> None:
    path = target.key_path("demo", "encrypt")
    body = _encrypt_bytes()
    head = (
        target.signed_head(path, body) + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
    answer = target.exchange(head + b"".join(_chunk(p) for p in pieces) + b"0\r\n\r\n")
    assert answer.status == 200, answer.describe()


def test_chunked_body_over_the_cap_is_refused_while_it_streams(target: Target) -> None:
    """Without Content-Length the cap must apply while the body streams in: the client below has
    sent just over max_body_bytes and has not finished, and is answered 400 naming the cap
    (a server buffering the whole body first would wait for the end, then time out)."""
    path = target.key_path("demo", "encrypt")
    head = target.signed_head(path, b"") + b"Transfer-Encoding: chunked\r\n\r\n"
    with target.connect() as s:
        s.sendall(head)
        for _ in range(5):  # 5 x 64 KiB > 262,144 bytes; no terminating chunk is ever sent
            s.sendall(_chunk(b"x" * 65536))
        answer = read_answer(s, what="chunked over the cap")
    doc = assert_xks_error(answer, 400, "ValidationException")
    assert "max_body_bytes" in doc["errorMessage"], doc


def test_an_answer_that_leaves_the_body_unread_closes_the_connection(target: Target) -> None:
    """granian drops an HTTP/1.1 connection whose body was refused unread; the answer must say
    so (``Connection: close``), or a client reusing the connection loses its next request."""
    path = target.key_path("demo", "encrypt")
    body = _encrypt_bytes()
    with target.connect() as s:  # keep-alive: a body that was read keeps the connection open
        s.sendall(target.signed_head(path, body) + f"Content-Length: {len(body)}\r\n\r\n".encode())
        s.sendall(body)
        served = read_answer(s, what="encrypt")
        assert served.status == 200 and "connection" not in served.headers, served.describe()
    head = target.signed_head(path, b"") + b"Content-Length: 300000\r\n\r\n"
    with target.connect() as s:  # declared over max_body_bytes: refused before reading
        s.sendall(head + b"{")
        answer = read_answer(s, what="declared too large")
    assert_xks_error(answer, 400, "ValidationException")
    assert answer.headers.get("connection") == "close", answer.describe()
    with target.connect() as s:  # unknown path, with a body: refused before reading it
        s.sendall(b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        answer = read_answer(s, what="unknown path")
    assert_xks_error(answer, 404, "InvalidUriPathException")
    assert answer.headers.get("connection") == "close", answer.describe()
