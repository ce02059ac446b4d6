"""``HOST:PORT`` listen addresses: the one parser every setting and flag goes through.

``[server] bind``, ``[metrics] bind``, ``XKSPROXY_BIND`` and ``serve --bind`` all name a listen
address the same way; one parser means one set of rules and one error text.  IPv6 hosts are
written in brackets (``[::1]:8443``) so that the last colon always separates the port.  Port 0
(an ephemeral port) is allowed where the caller says so (``serve --bind`` in tests).

This module imports nothing of xksproxy: every layer may use it.
"""

from __future__ import annotations

import re

_HOST_RE = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+")

BIND_FORMAT = "HOST:PORT (IPv6 as [::1]:8443)"


def parse_bind(value: str, *, allow_port_zero: bool = True) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); ``ValueError`` says what is wrong.

    The message does not name the setting: the caller prefixes the option it came from.
    """
    host, sep, port = value.rpartition(":")
    low = 0 if allow_port_zero else 1
    if (
        not sep
        or not _HOST_RE.fullmatch(host)
        or not port.isdigit()
        or len(port) > 5
        or not low <= int(port) <= 65535
    ):
        raise ValueError(f"must be {BIND_FORMAT}, port {low}-65535; got {value!r}")
    return host.strip("[]"), int(port)


def url_host(host: str) -> str:
    """``host`` as it stands in a URL: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host else host
