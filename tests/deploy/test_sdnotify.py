"""xksproxy.runtime.sdnotify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from xksproxy.runtime import sdnotify


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A path socket like /run/systemd/notify, named by $NOTIFY_SOCKET."""
    path = tmp_path / "notify"
    sock = _receiver(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        yield sock
    finally:
        sock.close()


def test_ready_sends_ready_1(systemd):
    assert sdnotify.ready() is True
    assert systemd.recv(4096) == b"READY=1"


def test_ready_with_status_adds_a_status_line(systemd):
    assert sdnotify.ready("listening on https://127.0.0.1:8443\nsecond line")
    assert systemd.recv(4096) == b"READY=1\nSTATUS=listening on https://127.0.0.1:8443 second line"


def test_stopping_and_status(systemd):
    assert sdnotify.stopping()
    assert systemd.recv(4096) == b"STOPPING=1"
    assert sdnotify.status("draining")
    assert systemd.recv(4096) == b"STATUS=draining"


def test_reloading_carries_a_monotonic_timestamp(systemd):
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading()
    msg = systemd.recv(4096).decode()
    m = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", msg)
    assert m, msg
    assert int(m.group(1)) >= before


def test_abstract_socket(monkeypatch):
    name = f"xksproxy-test-{uuid.uuid4().hex}"
    sock = _receiver(b"\0" + name.encode())
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("READY=1\nSTATUS=abstract")
        assert sock.recv(4096) == b"READY=1\nSTATUS=abstract"
    finally:
        sock.close()


def test_not_under_systemd_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    assert sdnotify.notify("READY=1") is False


@pytest.mark.parametrize("value", ["", "vsock:2:1234", "relative/path"])
def test_unsupported_addresses_return_false(monkeypatch, value):
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sdnotify.ready() is False


def test_nobody_listening_returns_false_instead_of_raising(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert sdnotify.ready() is False


def test_unset_environment_stops_children_from_notifying(systemd):
    assert sdnotify.notify("READY=1", unset_environment=True)
    assert systemd.recv(4096) == b"READY=1"
    assert "NOTIFY_SOCKET" not in os.environ
    assert sdnotify.ready() is False


def test_empty_state_sends_nothing(systemd):
    assert sdnotify.notify("") is False
    assert sdnotify.stopping()
    assert systemd.recv(4096) == b"STOPPING=1"  # the first datagram: nothing came before it
