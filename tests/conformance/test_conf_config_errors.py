"""Key store URI paths the spec forbids are refused at start, with a message naming the option."""

from __future__ import annotations

import subprocess

import pytest
from server_harness import cli_command, cli_env, free_port, store_toml


@pytest.mark.parametrize(
    "prefix",
    [
        "/" + "p" * 117,  # whole URI path 129 characters
        "/bad.prefix",
        "/bad prefix",
        "/bad~prefix",
        "no-slash",
    ],
)
def test_bad_path_prefix_refused_at_start(state, prefix):
    text, _ = store_toml(state, "badprefix", prefix)
    cfg = state.path / "xksproxy-badprefix.toml"
    cfg.write_text(state.config.read_text() + text)
    cmd = [
        *cli_command(),
        "serve",
        "--config",
        str(cfg),
        "--bind",
        f"127.0.0.1:{free_port()}",
        "--plain-http",
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=cli_env(), start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.communicate(timeout=10)
        pytest.fail(f"serve started with path_prefix {prefix!r}")
    assert proc.returncode == 2, (proc.returncode, out[-2000:])
    assert b"path_prefix" in out, out[-2000:]
