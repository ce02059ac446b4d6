"""deploy/container: the Containerfile is well formed, and the evaluation image's start command
runs the proxy as UID 10001 on a read-only root file system (no container engine here: a private
mount namespace with / remounted read-only stands in for `--read-only`)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from deploy_support import DEPLOY, REPO, encrypt_decrypt, http_get, make_runtime, set_metrics_bind
from deploy_support import start as start_proxy
from support import procs

CONTAINERFILE = DEPLOY / "container" / "Containerfile"
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
                "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK",
                "SHELL"}  # fmt: skip
IMAGE_UID = 10001
# Run as the image's user: print which of the directories given can be written to.
PROBE = """
import os, sys
ok = []
for d in sys.argv[1:]:
    try:
        with open(os.path.join(d, ".w"), "w"):
            pass
        os.unlink(os.path.join(d, ".w"))
        ok.append(d)
    except OSError:
        pass
print(repr(ok))
"""


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        values = [v for k, v in self.instructions if k == keyword]
        return values[-1] if values else None


def parse(text: str) -> tuple[list[tuple[str, str]], list[Stage]]:
    """(instructions before the first FROM, stages). Comments dropped, `\\` continuations joined.
    Inherited settings (USER, ENTRYPOINT, ENV...) are resolved by :func:`effective`."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # comment lines inside a continuation are allowed and ignored
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, "dangling line continuation"
    preamble: list[tuple[str, str]] = []
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        assert keyword in INSTRUCTIONS, f"unknown instruction {keyword!r}"
        if keyword == "FROM":
            words = rest.split()
            assert len(words) == 3 and words[1].upper() == "AS", f"unnamed stage: FROM {rest}"
            stages.append(Stage(words[2], words[0]))
        elif stages:
            stages[-1].instructions.append((keyword, rest.strip()))
        else:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            preamble.append((keyword, rest.strip()))
    return preamble, stages


def effective(stages: list[Stage], name: str, keyword: str) -> str | None:
    """The value a stage ends with, following `FROM <earlier stage>` inheritance."""
    by_name = {s.name: s for s in stages}
    stage: Stage | None = by_name[name]
    while stage is not None:
        value = stage.last(keyword)
        if value is not None:
            return value
        stage = by_name.get(stage.base)
    return None


def effective_env(stages: list[Stage], name: str) -> dict[str, str]:
    by_name = {s.name: s for s in stages}
    chain: list[Stage] = []
    stage: Stage | None = by_name[name]
    while stage is not None:
        chain.insert(0, stage)
        stage = by_name.get(stage.base)
    env: dict[str, str] = {}
    for s in chain:
        for k, v in s.instructions:
            if k == "ENV":
                for word in shlex.split(v):
                    key, sep, value = word.partition("=")
                    assert sep, f"use ENV KEY=VALUE, got {word!r}"
                    env[key] = value
    return env


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(CONTAINERFILE.read_text())[1]


def test_stages_are_named_and_based_on_debian_bookworm_slim(stages):
    preamble, _ = parse(CONTAINERFILE.read_text())
    args = dict(v.split("=", 1) for _, v in preamble)
    assert args["DEBIAN_IMAGE"].endswith("debian:bookworm-slim")
    assert [s.name for s in stages] == ["build", "production", "evaluation"]
    assert stages[0].base == stages[1].base == "${DEBIAN_IMAGE}"
    assert stages[2].base == "production"


def test_runtime_stages_run_as_a_fixed_non_root_user_with_healthcheck(stages):
    for name in ("production", "evaluation"):
        user = effective(stages, name, "USER")
        assert user == f"{IMAGE_UID}:{IMAGE_UID}", (name, user)
        hc = effective(stages, name, "HEALTHCHECK")
        assert hc and " CMD " in f" {hc}" and "healthcheck.py" in hc, hc
        assert json.loads(effective(stages, name, "ENTRYPOINT") or "null")[0].endswith(
            "/bin/xksproxy"
        )
        assert json.loads(effective(stages, name, "CMD") or "null")[0] == "serve"
        env = effective_env(stages, name)
        assert env["XKSPROXY_STATE_DIR"] == "/var/lib/xksproxy"
        assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    # The last USER of the evaluation stage (after its root-only apt step) is non-root again.
    assert stages[2].last("USER") == f"{IMAGE_UID}:{IMAGE_UID}"
    assert "softhsm2" in " ".join(v for k, v in stages[2].instructions if k == "RUN")
    assert "softhsm2" not in " ".join(v for k, v in stages[1].instructions if k == "RUN")


def test_build_stage_uses_pyproject_and_constraints(stages):
    runs = " ".join(v for k, v in stages[0].instructions if k == "RUN")
    assert "-c constraints.txt ." in runs and "python3 -m venv /opt/xksproxy/venv" in runs
    assert "-e " not in runs  # a real install, not an editable one pointing at /src


def test_every_copied_path_exists_in_the_repository(stages):
    copied = []
    for stage in stages:
        for k, v in stage.instructions:
            if k not in ("COPY", "ADD"):
                continue
            words = [w for w in shlex.split(v) if not w.startswith("--")]
            if any(w.startswith("--from=") for w in shlex.split(v)):
                continue  # from another stage, not from the build context
            copied += words[:-1]
    assert copied
    for src in copied:
        assert (REPO / src).exists(), src


def test_parser_rejects_what_a_builder_would(tmp_path):
    with pytest.raises(AssertionError):
        parse("FROM debian:bookworm-slim\nRUN true\n")  # unnamed stage
    with pytest.raises(AssertionError):
        parse("FROM x AS a\nCOPYY a b\n")


def _map(value: str, paths: dict[str, Path]) -> str:
    """An image path (or a path under one) as the test's host path; other values unchanged."""
    for image_path in sorted(paths, key=len, reverse=True):
        if value == image_path or value.startswith(image_path + "/"):
            return str(paths[image_path]) + value[len(image_path) :]
    return value


def _read_only_root_supported() -> bool:
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        "mount -o remount,bind,ro / && ! touch /.xksproxy-ro-probe 2>/dev/null"],
                       capture_output=True)  # fmt: skip
    return r.returncode == 0


@pytest.mark.skipif(os.getuid() != 0, reason="needs root: setpriv to UID 10001, mount namespace")
def test_evaluation_start_command_serves_as_uid_10001_on_a_read_only_root(stages):
    if not _read_only_root_supported():
        pytest.skip("cannot remount / read-only in a private mount namespace here")
    root = Path(tempfile.mkdtemp(prefix="xksproxy-image-"))
    try:
        root.chmod(0o755)
        script = make_runtime(root / "opt-xksproxy")  # the image's /opt/xksproxy/venv
        state = root / "var-lib-xksproxy"  # -v state:/var/lib/xksproxy
        tmp = root / "tmp"  # --tmpfs /tmp
        for d, mode in ((state, 0o700), (tmp, 0o1777)):
            d.mkdir()
            d.chmod(mode)
            shutil.chown(d, IMAGE_UID, IMAGE_UID)
        shutil.copy(REPO / "deploy" / "container" / "healthcheck.py", root / "healthcheck.py")
        paths = {"/opt/xksproxy/venv/bin/xksproxy": script,
                 "/opt/xksproxy/venv/bin/python": script.parent / "python",
                 "/opt/xksproxy/healthcheck.py": root / "healthcheck.py",
                 "/var/lib/xksproxy": state, "/tmp": tmp}  # fmt: skip
        port = procs.free_port()
        env = {k: _map(v, paths) for k, v in effective_env(stages, "evaluation").items()}
        env["PATH"] = env["PATH"].replace("/opt/xksproxy/venv/bin", str(script.parent))
        env["XKSPROXY_BIND"] = f"127.0.0.1:{port}"  # -p: loopback only in tests
        env["XKSPROXY_DRAIN_GRACE_S"] = "0"  # no load balancer to drain from in this test
        entry = json.loads(effective(stages, "evaluation", "ENTRYPOINT") or "[]")
        cmd = json.loads(effective(stages, "evaluation", "CMD") or "[]")
        argv = [_map(a, paths) for a in entry + cmd]

        # --read-only --tmpfs /tmp -v state:...: only these two stay writable.
        wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'for d in "$XKS_RW_STATE" "$XKS_RW_TMP"; do mount --bind "$d" "$d" || exit 97;'
                " done; mount -o remount,bind,ro / || exit 98;"
                f' exec setpriv --reuid={IMAGE_UID} --regid={IMAGE_UID} --clear-groups "$@"',
                "sh"]  # fmt: skip
        wenv = env | {"XKS_RW_STATE": str(state), "XKS_RW_TMP": str(tmp)}

        # What the user can write: exactly the state dir and the tmpfs stand-in.
        probe = PROBE
        candidates = [
            str(p)
            for p in (
                state,
                tmp,
                root,
                script.parent,
                root / "opt-xksproxy/src",
                REPO,
                Path("/etc"),
                Path("/var/tmp"),
                Path("/tmp"),
            )
        ]
        r = subprocess.run([*wrap, str(script.parent / "python"), "-c", probe, *candidates],
                           env=wenv, capture_output=True, text=True, timeout=30)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == repr([str(state), str(tmp)])

        # First start provisions; metrics moved off the shared default port before serving.
        init = subprocess.run([*wrap, str(script), "init"], env=wenv, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert init.returncode == 0, init.stdout + init.stderr
        set_metrics_bind(state, f"127.0.0.1:{procs.free_port()}")
        proxy = start_proxy([*wrap, *argv], wenv, cwd=root)
        try:
            assert proxy.url == f"https://127.0.0.1:{port}"
            assert http_get(f"{proxy.url}/ping")[0] == 200
            encrypt_decrypt(proxy.url, state)
            hc = [*wrap, str(script.parent / "python"), str(root / "healthcheck.py")]
            ok = subprocess.run(hc, env=wenv | {"XKSPROXY_HEALTHCHECK_PATH": "/ping"},
                                capture_output=True, text=True, timeout=30)  # fmt: skip
            assert ok.returncode == 0, ok.stderr
            bad = subprocess.run(hc, env=wenv | {"XKSPROXY_HEALTHCHECK_PATH": "/no-such-path"},
                                 capture_output=True, text=True, timeout=30)  # fmt: skip
            assert bad.returncode == 1
        finally:
            assert proxy.stop() == 0, proxy.output()[-3000:]
        owned = {p.stat().st_uid for p in state.rglob("*")}
        assert owned == {IMAGE_UID}
    finally:
        shutil.rmtree(root, ignore_errors=True)
