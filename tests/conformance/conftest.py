"""Session fixtures: one real ``xksproxy`` server per configuration, shared by the whole suite.

The main server runs plain HTTP on a loopback port with the embedded SoftHSMv2 token that
``xksproxy init`` provisions, plus extra key stores appended to its config (second store, disabled
key, disabled store, throttled store, 128-char URI path, second demo credential, a deny rule).
A TLS server and a fault-injection server (HSM behind the FaultShim) start lazily from the same
state directory when a test first needs them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conformance_helpers import BotocoreClient, CurlClient, RequestsClient
from server_harness import (
    DEFAULT_DEADLINE_MS,
    Server,
    StateDir,
    copy_config,
    extend_config,
    init_state,
    start_server,
)


@pytest.fixture(scope="session")
def state(tmp_path_factory: pytest.TempPathFactory) -> StateDir:
    st = init_state(tmp_path_factory.mktemp("xks-state"))
    extend_config(st)
    return st


@pytest.fixture(scope="session")
def server(state: StateDir) -> Iterator[Server]:
    srv = start_server(state)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def boto(server: Server) -> Iterator[BotocoreClient]:
    c = BotocoreClient(server.base_url)
    yield c
    c.close()


@pytest.fixture(scope="session")
def req(server: Server) -> Iterator[RequestsClient]:
    c = RequestsClient(server.base_url, server.host)
    yield c
    c.close()


@pytest.fixture(scope="session")
def curl(server: Server) -> CurlClient:
    return CurlClient(server.base_url)


@pytest.fixture(scope="session")
def stores(state: StateDir) -> dict:
    return state.stores


@pytest.fixture(scope="session")
def tls_server(state: StateDir, server: Server) -> Iterator[Server]:
    cfg = copy_config(state, "xksproxy-tls.toml", {("audit", "file"): '"audit/tls-audit.log"'})
    srv = start_server(state, config=cfg, plain_http=False, log_name="server-tls")
    yield srv
    srv.stop()


FAULTSHIM_SRC = Path(__file__).resolve().parents[1] / "support" / "faultshim.c"


@pytest.fixture(scope="session")
def fault_server(state: StateDir, server: Server) -> Iterator[Server]:
    """A second server whose [[hsm]] module is the FaultShim wrapping SoftHSMv2.

    "threaded" mode: a slowed HSM must block worker threads, not the event loop (that is the
    configuration the reference recommends for HSMs that take milliseconds). Health probes every
    second so a failing token shows up quickly.
    """
    if not FAULTSHIM_SRC.exists():
        pytest.skip("tests/support/faultshim.c not available yet")
    shim = state.path / "faultshim.so"
    done = subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-O2",
            "-o",
            str(shim),
            str(FAULTSHIM_SRC),
            "-ldl",
            "-lpthread",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"faultshim build failed:\n{done.stderr}"
    control = state.path / "faultshim.control"
    control.write_text("ok\n")
    cfg = copy_config(
        state,
        "xksproxy-fault.toml",
        {
            ("hsm", "module"): f'"{shim}"',
            ("hsm", "mode"): '"threaded"',
            ("health", "interval_s"): "1",
            ("server", "request_deadline_ms"): str(DEFAULT_DEADLINE_MS),
            ("audit", "file"): '"audit/fault-audit.log"',
        },
    )
    srv = start_server(
        state,
        config=cfg,
        log_name="server-fault",
        env={
            "FAULTSHIM_CONTROL": str(control),
            "FAULTSHIM_MODULE": "/usr/lib/softhsm/libsofthsm2.so",
        },
    )
    srv.control = control
    yield srv
    control.write_text("ok\n")
    srv.stop()


@pytest.fixture(scope="session")
def rotation_server(state: StateDir, server: Server) -> Iterator[Server]:
    """A server on its own copy of the config, which the rotation test edits through the CLI."""
    cfg = copy_config(
        state,
        "xksproxy-rotation.toml",
        {("audit", "file"): '"audit/rotation-audit.log"'},
        private_secrets=True,
    )
    srv = start_server(state, config=cfg, log_name="server-rotation")
    srv.config_path = cfg
    yield srv
    srv.stop()


@pytest.fixture(
    scope="module",
    params=[("granian", 2), ("hypercorn", 1), ("hypercorn", 2)],
    ids=lambda p: f"{p[0]}-{p[1]}w",
)
def alt_server(request: pytest.FixtureRequest, state: StateDir, server: Server) -> Iterator[Server]:
    """The same config under the other launcher choices of the stable CLI."""
    impl, workers = request.param
    name = f"{impl}-{workers}w"
    cfg = copy_config(
        state, f"xksproxy-{name}.toml", {("audit", "file"): f'"audit/{name}-audit.log"'}
    )
    srv = start_server(
        state, config=cfg, log_name=f"server-{name}", workers=workers, server_impl=impl
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def tls_hypercorn_server(state: StateDir, server: Server) -> Iterator[Server]:
    cfg = copy_config(
        state, "xksproxy-tls-hypercorn.toml", {("audit", "file"): '"audit/tls-hypercorn-audit.log"'}
    )
    srv = start_server(
        state,
        config=cfg,
        plain_http=False,
        log_name="server-tls-hypercorn",
        server_impl="hypercorn",
    )
    yield srv
    srv.stop()
