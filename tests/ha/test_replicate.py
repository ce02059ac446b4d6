"""The replication ceremony on two real SoftHSMv2 tokens (in a child: its own SOFTHSM2_CONF)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support import procs


def test_ceremony_copies_replicable_keys_only_and_leaves_no_transport_key(tmp_path) -> None:
    script = Path(__file__).with_name("replicate_facts.py")
    env = procs.product_env({"SOFTHSM2_CONF": str(tmp_path / "softhsm2.conf")})
    res = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env=env, cwd=procs.REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    facts = json.loads(res.stdout.strip().splitlines()[-1])
    assert facts["copied"] == ["rk"]
    assert len(facts["problems"]) == 1 and "plain: not replicable" in facts["problems"][0]
    assert facts["same_kcv"] and facts["usable_on_b"]
    # still sensitive and wrappable only under a trusted key; SoftHSMv2's VALUE_LEN quirk
    assert facts["copy_attrs"] == {"sensitive": True, "wrap_with_trusted": True, "value_len": 0}
    assert facts["user_may_set_trusted"] is False
    assert facts["untrusted_wrap"] == "refused"
    assert facts["leftover_public_keys"] == 0 and facts["leftover_on_source"] == 0
