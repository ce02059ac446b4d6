"""Start and stop real ``xksproxy`` server processes for the conformance suite.

Only the stable CLI is used (``xksproxy init``, ``credentials new``, ``serve``): the suite must keep
working against any implementation that honours ARCHITECTURE.md's CLI contract and the
``conf/xksproxy.toml`` schema. Configuration is derived from what ``init`` wrote, plus text appended
per the schema (extra key stores, credentials, deny rules) and a few option substitutions (metrics
listener off, so parallel servers do not fight over the default metrics port).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from conformance_helpers import Cred, Store
from support.procs import free_port as free_port  # re-exported for the test modules
from support.procs import product_env

REPO = Path(__file__).resolve().parents[2]
FUNCTIONAL_DEADLINE_MS = 1000
DEFAULT_DEADLINE_MS = 150
#: How long a server that answers /ping may take to print "xksproxy: listening on".
ANNOUNCE_GRACE_S = 10.0
AKID_RE = re.compile(r"\b[A-Z2-7]{20,30}\b")
SECRET_RE = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{42,63}={0,2}(?![A-Za-z0-9+/=])")


def cli_command() -> list[str]:
    """How to run the ``xksproxy`` console script, installed or not."""
    script = Path(sys.executable).with_name("xksproxy")
    if script.exists():
        return [str(script)]
    return [
        sys.executable,
        "-c",
        "import sys; from xksproxy.admin.cli import main; sys.exit(main())",
    ]


def cli_env() -> dict[str, str]:
    return product_env(drop=["XKSPROXY_CONFIG"])


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*cli_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
        cwd=REPO,
        check=False,
    )
    return done


def new_credential() -> Cred:
    """A fresh SigV4 pair via ``xksproxy credentials new``; own generation if the output is unclear.

    The fallback keeps the suite independent of that command's exact output format, which
    ARCHITECTURE.md does not fix.
    """
    done = run_cli("credentials", "new", timeout=60)
    if done.returncode == 0:
        text = done.stdout
        try:
            doc = json.loads(text)
            cred = doc.get("XksProxyAuthenticationCredential", doc)
            akid = cred.get("AccessKeyId") or cred.get("access_key_id")
            secret = cred.get("RawSecretAccessKey") or cred.get("secret")
            if akid and secret:
                return Cred(akid, secret)
        except (ValueError, AttributeError):
            pass
        akids = AKID_RE.findall(text)
        secrets_found = [s for s in SECRET_RE.findall(text) if 43 <= len(s) <= 64]
        if akids and secrets_found:
            return Cred(akids[0], secrets_found[0])
    akid = base64.b32encode(secrets.token_bytes(15)).decode()[:24]
    return Cred(akid, base64.b64encode(secrets.token_bytes(32)).decode())


def set_option(text: str, section: str, key: str, value: str) -> str:
    """Set ``key = value`` inside the first ``[section]``/``[[section]]`` table of a TOML text."""
    lines = text.splitlines()
    header = re.compile(r"^\s*\[\[?\s*" + re.escape(section) + r"\s*\]\]?\s*(#.*)?$")
    any_header = re.compile(r"^\s*\[")
    keyline = re.compile(r"^\s*" + re.escape(key) + r"\s*=")
    for i, line in enumerate(lines):
        if header.match(line):
            j = i + 1
            while j < len(lines) and not any_header.match(lines[j]):
                if keyline.match(lines[j]):
                    lines[j] = f"{key} = {value}"
                    return "\n".join(lines) + "\n"
                j += 1
            lines.insert(i + 1, f"{key} = {value}")
            return "\n".join(lines) + "\n"
    return text.rstrip("\n") + f"\n\n[{section}]\n{key} = {value}\n"


@dataclass
class StateDir:
    """One ``xksproxy init`` state directory and what the suite learned from it."""

    path: Path
    config: Path
    demo: Store
    hsm_name: str
    stores: dict[str, Store] = field(default_factory=dict)
    secrets_used: list[str] = field(default_factory=list)

    def write_secret(self, name: str, value: str) -> Path:
        p = self.path / "secrets" / name
        p.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        return p


def init_state(path: Path) -> StateDir:
    """``xksproxy init --state-dir`` and read back kms-console.json and the generated config."""
    done = run_cli("init", "--state-dir", str(path), timeout=180)
    assert done.returncode == 0, f"xksproxy init failed ({done.returncode}):\n{done.stderr[-3000:]}"
    console = json.loads((path / "kms-console.json").read_text())
    cred = console["XksProxyAuthenticationCredential"]
    uri_path: str = console["XksProxyUriPath"]
    assert uri_path.endswith("/kms/xks/v1"), uri_path
    config = path / "xksproxy.toml"
    parsed = tomllib.loads(config.read_text())
    demo = Store(
        "demo",
        uri_path[: -len("/kms/xks/v1")],
        (Cred(cred["AccessKeyId"], cred["RawSecretAccessKey"]),),
    )
    state = StateDir(path, config, demo, parsed["hsm"][0]["name"])
    state.secrets_used.append(demo.creds[0].secret)
    # Parallel servers (and teammates' servers) must not fight over the default metrics port.
    text = set_option(config.read_text(), "metrics", "bind", '""')
    # CI machines are shared and often overloaded: a generous deadline keeps functional tests from
    # flaking on CPU contention. The fault server restores the 150 ms default to test 503.
    text = set_option(text, "server", "request_deadline_ms", str(FUNCTIONAL_DEADLINE_MS))
    config.write_text(text)
    return state


def store_toml(
    state: StateDir,
    name: str,
    prefix: str,
    extra: str = "",
    regions: str = "[]",
    keys: str = '["demo"]',
) -> tuple[str, Store]:
    """A ``[[keystore]]`` table with its own fresh credential written to a 0600 secret file."""
    cred = new_credential()
    secret_file = state.write_secret(f"conformance-{name}.secret", cred.secret)
    state.secrets_used.append(cred.secret)
    text = (
        f'\n[[keystore]]\nname = "{name}"\npath_prefix = "{prefix}"\n'
        f'hsm = "{state.hsm_name}"\nregions = {regions}\nkeys = {keys}\n{extra}'
        f'\n[[keystore.credentials]]\naccess_key_id = "{cred.akid}"\n'
        f'secret = "file:{secret_file}"\n'
    )
    return text, Store(name, prefix, (cred,))


LONG_PREFIX = "/" + "p" * (128 - len("/kms/xks/v1") - 1)  # whole URI path exactly 128 chars


def extend_config(state: StateDir) -> None:
    """Append the suite's key stores, credentials and deny rule (per conf/xksproxy.toml).

    ``[[keystore.credentials]]`` and ``[[keystore.deny]]`` written straight after init's text attach
    to the last ``[[keystore]]`` of that text, i.e. the demo store; this is checked by parsing.
    """
    demo2 = new_credential()
    f2 = state.write_secret("conformance-demo-2.secret", demo2.secret)
    state.secrets_used.append(demo2.secret)
    parts = [
        "\n# ---- appended by tests/conformance ----\n"
        f'[[keystore.credentials]]\naccess_key_id = "{demo2.akid}"\nsecret = "file:{f2}"\n'
        '\n[[keystore.deny]]\nname = "conformance-denied-role"\n'
        'principal = "arn:aws:iam::*:role/denied"\n'
        '\n[[keystore.deny]]\nname = "conformance-op-glob"\noperation = "Forbidden*"\n'
        '\n[[keystore.deny]]\nname = "conformance-and"\nkey_id = "demo-encrypt-only"\n'
        'via_service = "blocked-svc"\n'
    ]
    stores = {"demo": Store("demo", state.demo.prefix, (*state.demo.creds, demo2))}
    for name, prefix, extra in [
        ("second", "/second", ""),
        ("keyoff", "/keyoff", 'disabled_keys = ["demo"]\n'),
        ("storeoff", "/storeoff", "enabled = false\n"),
        ("throttled", "/throttled", "\n[keystore.quota]\nrate = 1\nburst = 1\n"),
        ("longprefix", LONG_PREFIX, ""),
    ]:
        text, store = store_toml(state, name, prefix, extra)
        parts.append(text)
        stores[name] = store
    for name, prefix, regions, keys, extra in [
        ("regional", "/regional", '["eu-west-1", "us-east-1"]', '["demo"]', ""),
        ("wildcard", "/wildcard", "[]", '["*"]', ""),
        (
            "aliased",
            "/aliased",
            "[]",
            '["alias-1"]',
            '\n[keystore.key_labels]\n"alias-1" = "demo"\n',
        ),
    ]:
        text, store = store_toml(state, name, prefix, extra, regions=regions, keys=keys)
        parts.append(text)
        stores[name] = store
    with state.config.open("a") as f:
        f.write("".join(parts))
    parsed = tomllib.loads(state.config.read_text())
    by_prefix = {ks["path_prefix"]: ks for ks in parsed["keystore"]}
    demo_ks = by_prefix[state.demo.prefix]
    assert len(demo_ks.get("credentials", [])) == 2, "second demo credential did not attach"
    assert len(demo_ks.get("deny", [])) == 3, "deny rules did not attach to the demo store"
    state.stores = stores


@dataclass
class Server:
    """A running ``xksproxy serve`` process and where its output goes."""

    proc: subprocess.Popen[bytes]
    base_url: str
    host: str
    log_path: Path
    state: StateDir
    exit_code: int | None = None
    control: Path | None = None  # FaultShim control file, for the fault-injection server
    config_path: Path | None = None  # the config this server was started with, if not the default

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; returns the exit code (None if it had to be killed)."""
        if self.proc.poll() is not None:
            self.exit_code = self.proc.returncode
            return self.exit_code
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.exit_code = None
        return self.exit_code


def start_server(
    state: StateDir,
    *,
    config: Path | None = None,
    plain_http: bool = True,
    log_name: str = "server",
    env: dict[str, str] | None = None,
    startup_s: float = 60.0,
    workers: int = 1,
    server_impl: str | None = None,
) -> Server:
    """``xksproxy serve`` on a free loopback port; wait for the "listening on" line or /ping."""
    port = free_port()
    host = f"127.0.0.1:{port}"
    log_path = state.path / f"{log_name}.out"
    cmd = [
        *cli_command(),
        "serve",
        "--config",
        str(config or state.config),
        "--bind",
        host,
        "--workers",
        str(workers),
    ]
    if server_impl is not None:
        cmd += ["--server", server_impl]
    if plain_http:
        cmd.append("--plain-http")
    full_env = cli_env()
    full_env.update(env or {})
    out = log_path.open("wb")
    proc = subprocess.Popen(
        cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=REPO, start_new_session=True
    )
    out.close()
    scheme = "http" if plain_http else "https"
    server = Server(proc, f"{scheme}://{host}", host, log_path, state)
    deadline = time.monotonic() + startup_s
    pinged: float | None = None  # when /ping first answered
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"xksproxy serve exited {proc.returncode}:\n{server.log_text()[-4000:]}"
            )
        if "listening on" in server.log_text():
            return server
        if pinged is None:
            try:
                r = httpx.get(f"{server.base_url}/ping", verify=False, timeout=1.0)
                if r.status_code == 200:
                    pinged = time.monotonic()
            except httpx.HTTPError:
                pass
        elif time.monotonic() - pinged > ANNOUNCE_GRACE_S:
            return server  # answering, but no start-up lines: the tests that read them say so
        # /ping can answer a moment before the launcher prints its start-up lines: wait for
        # them too, or a short test could stop the server before they are written.
        time.sleep(0.05 if pinged is not None else 0.2)
    server.stop()
    raise AssertionError(
        f"xksproxy serve did not start in {startup_s}s:\n{server.log_text()[-4000:]}"
    )


def copy_config(
    state: StateDir, name: str, edits: dict[tuple[str, str], str], private_secrets: bool = False
) -> Path:
    """A variant of the state's config with some options replaced (e.g. the HSM module).

    ``private_secrets``: give the copy its own copies of the suite's secret files, so that a CLI
    editing this config (``credentials remove`` deletes the removed secret's file) cannot break
    the other servers, which reference the originals.
    """
    text = state.config.read_text()
    for (section, key), value in edits.items():
        text = set_option(text, section, key, value)
    if private_secrets:
        stem = Path(name).stem
        for src in sorted((state.path / "secrets").glob("conformance-*.secret")):
            dst = src.with_name(f"{stem}-{src.name}")
            shutil.copy2(src, dst)
            text = text.replace(f'file:{src}"', f'file:{dst}"')
    path = state.path / name
    path.write_text(text)
    return path


def describe_env() -> dict[str, Any]:
    return {"curl": shutil.which("curl"), "python": sys.executable}
