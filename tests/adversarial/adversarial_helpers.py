"""Raw-socket client for hostile requests: exact bytes on the wire, signed or not.

httpx and friends normalise what they send (paths, headers, framing); an adversarial checker does
not, so these helpers build HTTP/1.1 requests by hand and parse the answer just enough to judge it
against the XKS error contract (status, ``application/json``, ``{"errorName","errorMessage"}``).
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any

from conformance_helpers import Cred, botocore_headers
from server_harness import Server

API = "/kms/xks/v1"
# A plaintext the hostile requests carry: it must never reach a log or an error message.
MARKER = b"adversarial-plaintext-marker"
READ_TIMEOUT_S = 20.0


@dataclass
class Answer:
    """One parsed HTTP/1.x response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def describe(self) -> str:
        return f"HTTP {self.status} {self.headers.get('content-type')!r} {self.body[:200]!r}"


@dataclass
class Target:
    """The running server and the demo store's credential."""

    server: Server
    cred: Cred
    prefix: str

    @property
    def port(self) -> int:
        return int(self.server.host.rsplit(":", 1)[1])

    def key_path(self, key_id: str, op: str) -> str:
        return f"{self.prefix}{API}/keys/{key_id}/{op}"

    def signed_head(
        self,
        path: str,
        body: bytes,
        *,
        sign_path: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> bytes:
        """Request line and headers (no body), signed by botocore for ``sign_path or path``."""
        headers = botocore_headers(self.server.base_url + (sign_path or path), body, self.cred)
        headers["Host"] = self.server.host
        headers.update(extra or {})
        lines = [f"POST {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n").encode("latin-1")

    def post(self, path: str, body: bytes, **kw: Any) -> Answer:
        """A signed POST with Content-Length, the connection closed after the answer."""
        head = self.signed_head(path, body, **kw)
        return self.exchange(
            head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
        )

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=READ_TIMEOUT_S)

    def exchange(self, data: bytes) -> Answer:
        with self.connect() as s:
            s.sendall(data)
            return read_answer(s)


def read_answer(s: socket.socket, what: str = "") -> Answer:
    """Read one response (up to Content-Length, else to EOF); raises on a silent server."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError(f"{what}: connection closed before a response: {buf[:200]!r}")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "-1"))
    while length < 0 or len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return Answer(status, headers, body if length < 0 else body[:length])


def assert_xks_error(answer: Answer, status: int, name: str) -> dict[str, Any]:
    """The XKS error contract: status, JSON content type, exactly errorName + errorMessage."""
    assert answer.status == status, answer.describe()
    assert answer.headers.get("content-type", "").startswith("application/json"), answer.describe()
    doc = answer.json()
    assert set(doc) == {"errorName", "errorMessage"}, answer.describe()
    assert doc["errorName"] == name, answer.describe()
    message = doc["errorMessage"]
    assert len(message) < 512 and all(" " <= ch <= "~" for ch in message), answer.describe()
    return doc
