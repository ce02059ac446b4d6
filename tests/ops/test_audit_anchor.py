"""Issue 17 item 2: log and head rolled back together are caught by the HSM checkpoint.

A real embedded SoftHSMv2 token (``xksproxy init``), the anchor key generated inside it by
``xksproxy audit checkpoint --create-key``; the writer is driven in-process.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import orjson
import pytest

from xksproxy.admin import embedded
from xksproxy.config import load_config
from xksproxy.observe.audit import AuditLog, alarm_path, head_path, main_checkpoint, main_verify
from xksproxy.observe.audit import anchor as anchor_mod


@pytest.fixture
def anchored(tmp_path: Path):
    state = tmp_path / "state"
    embedded.init(state)
    config = state / "xksproxy.toml"
    text = config.read_text()
    assert 'anchor_hsm = ""' in text  # the embedded default: file-key mode, no anchor
    config.write_text(text.replace('anchor_hsm = ""', 'anchor_hsm = "softhsm-0"', 1))
    return config, load_config(config)


def _write(cfg, start: int, n: int) -> None:
    log = AuditLog(cfg.audit.file, cfg.audit.key)
    log.start(watch_interval_s=0)
    for i in range(start, start + n):
        log.record({"kmsRequestId": f"req-{i}", "kmsOperation": "Encrypt", "status": 200})
    log.close()


def test_rollback_of_log_and_head_together_fails_verify_and_is_recorded(anchored, tmp_path, capsys):
    config, cfg = anchored
    log = cfg.audit.file
    _write(cfg, 0, 5)
    backup = tmp_path / "backup"
    backup.mkdir()
    shutil.copy2(log, backup / log.name)
    shutil.copy2(head_path(log), backup / head_path(log).name)
    _write(cfg, 5, 5)
    assert main_checkpoint(config_path=config, create_key=True, json_out=True) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc == {"created_key": True, "seq": 10, "time": doc["time"]}
    assert main_verify([], config_path=config) == 0
    assert "HSM checkpoint" in capsys.readouterr().out
    # roll back the log *and* its head: without the anchor this verifies as intact
    shutil.copy2(backup / log.name, log)
    shutil.copy2(backup / head_path(log).name, head_path(log))
    from xksproxy.observe.audit import verify_files

    assert verify_files([log], cfg.audit.key).ok  # the files alone cannot tell
    assert main_verify([], config_path=config) == 1
    assert "ROLLBACK" in capsys.readouterr().out
    # the next checkpoint refuses to anchor the shorter chain and records the rollback
    assert main_checkpoint(config_path=config) == 1
    assert "ROLLBACK" in capsys.readouterr().err
    gaps = [orjson.loads(x) for x in log.read_bytes().splitlines() if b'"gap"' in x]
    assert gaps and gaps[-1]["gapReason"] == "rolled-back" and gaps[-1]["lostTipSeq"] == 10
    assert gaps[-1]["seq"] == 11  # never below the anchored seq
    assert alarm_path(log).exists()  # the workers refuse Encrypt/Decrypt


def test_rolled_back_then_written_again_is_caught_too(anchored, capsys):
    config, cfg = anchored
    log = cfg.audit.file
    _write(cfg, 0, 3)
    old_log, old_head = log.read_bytes(), head_path(log).read_bytes()
    _write(cfg, 3, 3)
    assert main_checkpoint(config_path=config, create_key=True) == 0
    log.write_bytes(old_log)
    head_path(log).write_bytes(old_head)
    _write(cfg, 100, 5)  # the chain grows past seq 6 again, with other records
    assert main_verify([], config_path=config) == 1
    assert "not the one the HSM checkpoint" in capsys.readouterr().out
    assert main_checkpoint(config_path=config) == 1


def test_workers_schedule_checkpoints_in_a_child_process(anchored):
    config, cfg = anchored
    anchor_mod.ensure_key(cfg)
    _write(cfg, 0, 2)
    sched = anchor_mod.Scheduler(config, cfg.audit.file, interval_s=3600)
    sched.after_batch()  # no checkpoint yet: starts the child
    sched.close()  # waits for it
    cp = anchor_mod.newest(cfg)
    assert cp is not None and cp.seq == 2 and cp.valid
    stamp = anchor_mod.stamp_path(cfg.audit.file)
    assert stamp.exists()
    before = stamp.stat().st_mtime
    time.sleep(0.01)
    sched2 = anchor_mod.Scheduler(config, cfg.audit.file, interval_s=3600)
    sched2.after_batch()  # the newest checkpoint is fresh: nothing started
    assert sched2._child is None and stamp.stat().st_mtime == before


def test_doctor_warns_without_an_anchor_and_checks_the_checkpoint(anchored, tmp_path):
    from xksproxy.admin import audit_doctor, doctor

    config, cfg = anchored
    report = doctor.Report()
    audit_doctor.check_audit_anchor(report, cfg)
    assert report.checks[-1].status == doctor.WARN and "--create-key" in report.checks[-1].fix
    _write(cfg, 0, 2)
    assert main_checkpoint(config_path=config, create_key=True) == 0
    audit_doctor.check_audit_anchor(report, cfg)
    assert report.checks[-1].status == doctor.OK and "seq 2" in report.checks[-1].detail
    plain = tmp_path / "plain"
    embedded.init(plain)  # file-key mode only: rollback undetectable, said so
    plain_cfg = load_config(plain / "xksproxy.toml")
    audit_doctor.check_audit_anchor(report, plain_cfg)
    # the embedded evaluation default: said, not warned (like its restricted demo keys)
    assert report.checks[-1].status == doctor.OK
    assert "rolled back together" in report.checks[-1].detail
    assert "evaluation default" in report.checks[-1].detail
    production = dataclasses.replace(
        plain_cfg, keystores=[dataclasses.replace(k, name="prod") for k in plain_cfg.keystores]
    )
    audit_doctor.check_audit_anchor(report, production)
    assert report.checks[-1].status == doctor.WARN


def test_a_running_server_checkpoints_on_its_own(anchored):
    import httpx
    from ops_client import encrypt_body, signed
    from ops_config import set_option
    from ops_server import start

    config, cfg = anchored
    set_option(config, "audit", "checkpoint_interval_s", "1")
    anchor_mod.ensure_key(cfg)
    srv = start(config, workers=1)
    try:
        cred = cfg.keystores[0].credentials[0]
        path = "/demo/kms/xks/v1/keys/demo/encrypt"
        seen = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            body = encrypt_body(b"pt-anchor-live-5e2a")
            r = httpx.post(
                srv.base_url + path, content=body, headers=signed(path, body, cred, srv.host)
            )
            assert r.status_code == 200, r.text
            cp = anchor_mod.newest(cfg)
            seen = cp.seq if cp is not None and cp.valid else 0
            if seen >= 2:  # the first batch's checkpoint, then one a second later
                break
            time.sleep(0.3)
        assert seen >= 2, srv.output()[-2000:]
    finally:
        srv.stop()
    assert main_verify([], config_path=config) == 0
