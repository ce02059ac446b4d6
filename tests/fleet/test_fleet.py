"""A fleet behind a real HAProxy (the shipped config, ports substituted): readiness and drain.

The short version of ``loadtest/fleet.py``: two `xksproxy serve` instances sharing one SoftHSMv2
token (through the fault shim, so the HSM can be made to fail), HAProxy in TCP mode checking
``/ready``, and pre-signed KMS traffic through HAProxy. What a user of the fleet would notice:

- a rolling restart (SIGTERM one instance, start it again) fails no request;
- while it drains, the instance answers ``/ready`` 503 ``draining`` but still serves ``/ping``
  and KMS requests, with ``Connection: close`` so clients move to a ready instance;
- while no HSM member is ACTIVE (the shim fails every PKCS#11 call), ``/ready`` is 503 naming the
  HSM, HAProxy takes the instances out, and both come back when the HSM does.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support.faultshim import FaultShim

from loadtest import fleet as fleet_mod
from loadtest import fleet_client

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None, reason="haproxy missing (scripts/bootstrap.sh installs it)"
)

GRACE_S = 3.0


@pytest.fixture(scope="module")
def shim(tmp_path_factory) -> FaultShim:
    return FaultShim.create(tmp_path_factory.mktemp("shim"))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, shim):
    def through_shim(config: Path) -> None:
        text = config.read_text()
        assert 'module = "/usr/lib/softhsm/libsofthsm2.so"' in text and "[hsm.env]\n" in text
        text = text.replace(
            'module = "/usr/lib/softhsm/libsofthsm2.so"', f'module = "{shim.module_path}"'
        )
        extra = "".join(f'{k} = "{v}"\n' for k, v in shim.env().items())
        text = text.replace("[hsm.env]\n", "[hsm.env]\n" + extra, 1)
        # What is tested is the drain, not the latency budget: a machine shared with other jobs
        # may stall a worker past 150 ms (a 503 that has nothing to do with the restart).
        assert "request_deadline_ms = 150\n" in text
        config.write_text(
            text.replace("request_deadline_ms = 150\n", "request_deadline_ms = 3000\n")
        )

    work = tmp_path_factory.mktemp("fleet")
    with fleet_mod.fleet(
        instances=2, workers=1, drain_grace_s=GRACE_S, workdir=work, configure=through_shim
    ) as f:
        yield f
    shim.set("ok")


@pytest.fixture
def all_up(fleet, shim):
    """Each test starts and ends with a healthy HSM and every instance in rotation."""
    shim.set("ok")
    fleet.all_up(30)
    yield fleet
    shim.set("ok")
    fleet.all_up(30)


def _load(f: fleet_mod.Fleet, during, *, connections: int = 6, settle_s: float = 1.0,
          rate: float = 300.0):  # fmt: skip
    """Run KMS-mix load through HAProxy while ``during(f)`` runs in a thread."""
    requests = asyncio.run(_presigned(f))
    stop = asyncio.Event()
    result: dict[str, object] = {}

    async def drive() -> fleet_client.Load:
        runner = asyncio.ensure_future(
            fleet_client.run(f.haproxy.url, fleet_mod.unverified_tls(), requests,
                             connections=connections, duration_s=90, stop=stop, rate=rate)
        )  # fmt: skip
        try:
            await asyncio.sleep(settle_s)
            result["during"] = await asyncio.get_running_loop().run_in_executor(None, during, f)
            await asyncio.sleep(settle_s)
        finally:
            stop.set()
        return await runner

    load = asyncio.run(drive())
    return load, result.get("during")


async def _presigned(f: fleet_mod.Fleet) -> list[tuple[str, bytes]]:
    import os

    os.environ["XKS_STATE_DIR"] = str(f.state_dir)
    return await fleet_mod._presigned(f.haproxy.url, n=8)


def _watch_ready(inst: fleet_mod.Instance, stop: threading.Event, seen: list) -> None:
    while not stop.is_set():
        status, body = fleet_mod.get_status(inst.url + "/ready", timeout=1.0)
        ping, _ = fleet_mod.get_status(inst.url + "/ping", timeout=1.0)
        seen.append((status, body, ping))
        stop.wait(0.1)


def test_rolling_sigterm_fails_no_request_and_ready_says_draining(all_up):
    inst = all_up.instances[0]
    seen: list[tuple[int, bytes, int]] = []

    def roll(f: fleet_mod.Fleet):
        stop = threading.Event()
        watcher = threading.Thread(target=_watch_ready, args=(inst, stop, seen), daemon=True)
        watcher.start()
        try:
            return fleet_mod.rolling_restart(f, inst, GRACE_S)
        finally:
            stop.set()
            watcher.join(5)

    load, _ = _load(all_up, roll)
    assert len(load.records) > 50, "the load did not run"
    assert load.failures() == [], [(r.outcome, r.sent) for r in load.failures()[:5]]
    # The draining instance told its clients to reconnect (HTTP/1.1 Connection: close).
    assert load.reconnects > 0
    # /ready: 503 "draining" while the process still answers /ping, before it exits.
    draining = [(s, b, p) for s, b, p in seen if s == 503]
    assert draining, seen[:5]
    assert all(json.loads(b) == {"ready": False, "reason": "draining: the proxy is shutting down"}
               for _, b, _ in draining)  # fmt: skip
    assert any(p == 200 for _, _, p in draining), "no /ping answer during the drain"
    assert seen[-1][0] == 200, "the restarted instance is not ready again"


def test_a_draining_instance_still_serves_kms_requests_with_connection_close(all_up):
    inst = all_up.instances[1]
    requests = asyncio.run(_presigned(all_up))
    inst.signal(signal.SIGTERM)
    try:
        time.sleep(0.3)  # the drain flag is seen at once; give the signal time to arrive

        async def direct() -> fleet_client.Load:
            return await fleet_client.run(inst.url, fleet_mod.unverified_tls(), requests,
                                          connections=2, duration_s=0.5)  # fmt: skip

        load = asyncio.run(direct())
        assert load.records and load.failures() == []
        assert load.reconnects == len(load.records)  # every answer said Connection: close
        status, body = fleet_mod.get_status(inst.url + "/ready")
        assert status == 503 and b"draining" in body
        assert inst.wait_exit(GRACE_S + 20) == 0
    finally:
        if inst.proc is not None and inst.proc.poll() is not None:
            inst.start()
            inst.wait_listening()


def test_ready_is_503_while_no_hsm_member_is_active(all_up, shim):
    shim.set("device_error")
    deadline = time.monotonic() + 20
    answers: dict[str, tuple[int, bytes]] = {}
    while time.monotonic() < deadline:
        answers = {i.name: fleet_mod.get_status(i.url + "/ready") for i in all_up.instances}
        if all(s == 503 for s, _ in answers.values()):
            break
        time.sleep(0.2)
    for status, body in answers.values():
        assert status == 503, answers
        reason = json.loads(body)["reason"]
        assert reason.startswith("key store demo: HSM softhsm-0 is UNAVAILABLE"), reason
        assert "PIN" not in reason and "pin" not in reason
    # /ping is liveness only: still 200.
    assert fleet_mod.get_status(all_up.instances[0].url + "/ping")[0] == 200
    for inst in all_up.instances:  # HAProxy took them out of rotation
        all_up.haproxy.wait_status(inst.name, "DOWN", 15)
    shim.set("ok")
    for inst in all_up.instances:  # and puts them back once the probe passes again
        all_up.haproxy.wait_status(inst.name, "UP", 30)


def test_kms_signals_are_in_each_instances_metrics(all_up):
    """The gauges KMS operators map to CloudWatch (OPERATIONS.md), from a live instance."""
    inst = all_up.instances[0]
    unsigned = urllib.request.Request(inst.url + "/demo/kms/xks/v1/keys/demo/encrypt", data=b"{}",
                                      method="POST")  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:  # counted as an XKS error by name
        urllib.request.urlopen(unsigned, timeout=5, context=fleet_mod.unverified_tls())
    refused.value.close()
    assert refused.value.code == 401
    deadline = time.monotonic() + 10
    values: dict[str, float] = {}
    wanted = (
        "xksproxy_tls_certificate_expiry_seconds",
        'xksproxy_credential_age_seconds{keystore="demo"}',
        "xksproxy_ready",
        "xksproxy_draining",
        "xksproxy_workers",
        'xksproxy_errors_total{errorName="AuthenticationFailedException",operation="encrypt"}',
    )
    while time.monotonic() < deadline:
        status, body = fleet_mod.get_status(f"http://127.0.0.1:{inst.metrics_port}/metrics")
        text = body.decode() if status == 200 else ""
        values = {}
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
        if all(w in values for w in wanted):
            break
        time.sleep(0.3)
    for name in wanted:
        assert name in values, (name, sorted(values)[:40])
    assert 86400 < values["xksproxy_tls_certificate_expiry_seconds"] < 3650 * 86400
    assert 0 <= values['xksproxy_credential_age_seconds{keystore="demo"}'] < 86400
    assert values["xksproxy_ready"] == values["xksproxy_workers"] == 1
    assert values["xksproxy_draining"] == 0
    # (xksproxy_throttled_total{reason,keystore}: tests/ops/test_quota_live.py.)
