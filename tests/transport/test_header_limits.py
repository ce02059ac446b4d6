"""Issue 17 item 6: header amplification is capped on both servers and both protocols.

granian used to advertise a 16 MiB HTTP/2 header list (a 16 KB stream decoded to 16 MB) and
accept a 100 KB HTTP/1.1 header line. Now: at most ``httpio.MAX_HEADER_BYTES`` (16 KiB) either way,
checked with a raw socket (HTTP/1.1) and the ``h2`` state machine over h2c (HTTP/2), against one
plain-HTTP server per implementation (probe app: no HSM needed).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from transport_support import Served, serve_env, write_config

from xksproxy.service.httpio import MAX_HEADER_BYTES

OVER = 100_000  # the review's header line
UNDER = 4_000  # a generous but normal header


@pytest.fixture(scope="module", params=["granian", "hypercorn"])
def plain_server(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[tuple[str, int]]:
    d = tmp_path_factory.mktemp(f"hdr-{request.param}")
    cfg = write_config(d)
    args = ["--config", str(cfg), "--bind", "127.0.0.1:0", "--server", request.param]
    served = Served([*args, "--workers", "1", "--plain-http"], serve_env(True), d)
    try:
        host, port = served.url.removeprefix("http://").rsplit(":", 1)
        yield host, int(port)
    finally:
        served.stop()


def _h1(addr: tuple[str, int], header_value_len: int, body: bytes = b"{}") -> bytes:
    """Send one HTTP/1.1 request with an ``x-pad`` header of that length; the status line."""
    request = (
        f"POST /x HTTP/1.1\r\nHost: {addr[0]}\r\nx-pad: {'a' * header_value_len}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    with socket.create_connection(addr, timeout=20) as s:
        try:
            s.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may stop reading and close first: that is a refusal too
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
    return data.split(b"\r\n", 1)[0]


def test_http11_header_line_over_the_cap_is_refused(plain_server) -> None:
    assert b" 200 " in _h1(plain_server, UNDER) + b" "
    # the cap is on headers only: a body far larger than it is still read
    assert b" 200 " in _h1(plain_server, UNDER, b"{" + b" " * 200_000 + b"}") + b" "
    status = _h1(plain_server, OVER)
    # 431 (or 400) or a closed connection; never served
    assert status == b"" or status.split()[1] in (b"400", b"413", b"431"), status


def _h2_exchange(addr: tuple[str, int], header_value_len: int) -> tuple[int | None, list[object]]:
    """h2c with prior knowledge: the server's MAX_HEADER_LIST_SIZE and the request's events."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    advertised: int | None = None
    events: list[object] = []
    with socket.create_connection(addr, timeout=20) as s:
        s.sendall(conn.data_to_send())
        headers = [
            (":method", "POST"),
            (":path", "/x"),
            (":scheme", "http"),
            (":authority", addr[0]),
            ("x-pad", "a" * header_value_len),
        ]
        sent = False
        done = False
        while not done:
            data = s.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                events.append(ev)
                if isinstance(ev, h2.events.RemoteSettingsChanged):
                    setting = ev.changed_settings.get(h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE)
                    if setting is not None:
                        advertised = setting.new_value
                if isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                    done = True
                if isinstance(ev, h2.events.ConnectionTerminated):
                    done = True
            if not sent and any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events):
                # our client-side h2 honours the server's limit: lift it to send the attack
                conn.remote_settings[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE] = 2**31 - 1
                conn.send_headers(1, headers)
                conn.send_data(1, b"{}", end_stream=True)
                sent = True
            out = conn.data_to_send()
            if out:
                try:
                    s.sendall(out)
                except (BrokenPipeError, ConnectionResetError):
                    break
    return advertised, events


def _status(events: list[object]) -> str | None:
    for ev in events:
        if isinstance(ev, h2.events.ResponseReceived):
            return dict(ev.headers).get(b":status", b"").decode()
    return None


def test_http2_header_list_is_capped(plain_server) -> None:
    advertised, events = _h2_exchange(plain_server, UNDER)
    assert advertised is not None and advertised <= MAX_HEADER_BYTES, advertised
    assert _status(events) == "200"
    _, events = _h2_exchange(plain_server, OVER)
    status = _status(events)
    refused = any(
        isinstance(e, (h2.events.StreamReset, h2.events.ConnectionTerminated)) for e in events
    )
    assert status in ("431", "400") or (status is None and refused), events
