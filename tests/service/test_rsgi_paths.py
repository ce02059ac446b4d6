"""RSGI gives the app a decoded path; ``wire_path`` must give SigV4 and the router the wire form."""

from __future__ import annotations

import pytest

from xksproxy.runtime.rsgi import wire_path


@pytest.mark.parametrize(
    "path",
    [
        "/demo/kms/xks/v1/keys/a.b-c_D9/encrypt",
        "/kms/xks/v1/health",
        "/ping",
    ],
)
def test_paths_kms_sends_pass_unchanged(path: str) -> None:
    assert wire_path(path) is path


@pytest.mark.parametrize(
    ("decoded", "wire"),
    [
        ("/keys/de mo/encrypt", "/keys/de%20mo/encrypt"),
        ("/keys/de!mo/encrypt", "/keys/de%21mo/encrypt"),
        ("/keys/dé/encrypt", "/keys/d%C3%A9/encrypt"),
        ("/keys/demo/encrypt\x00", "/keys/demo/encrypt%00"),
        ("/keys/a%b", "/keys/a%25b"),  # a literal '%' (sent as %25) never routes as an escape
    ],
)
def test_other_characters_are_re_encoded(decoded: str, wire: str) -> None:
    assert wire_path(decoded) == wire
