"""`xksproxy init`: the embedded default (SoftHSMv2 token, demo keys, demo key store, files).

Why this exists: a newcomer should get a working proxy from one command, with nothing to edit.
`init` *converges* a state directory towards the embedded layout: every run creates what is missing
and leaves everything that exists alone, so it is safe to run before each `serve`, and a run that
crashed half-way is completed by the next one. `xksproxy.toml` is written last and marks a complete
initialisation: until it exists, the demo credential is not referenced by anything and may be
regenerated; once it exists it is never rewritten (the operator may have edited it).

Every file is written atomically (temp file + fsync + rename), so a crash never leaves a truncated
config or secret behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import subprocess
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import sigv4
from xksproxy.admin import members_init
from xksproxy.environment import default_state_dir
from xksproxy.fsutil import atomic_write  # re-exported: credentials_ops and others use it here
from xksproxy.xks.protocol import ordered_key_usage
from xksproxy.xks.uri import base_path

if TYPE_CHECKING:
    from hsm import HsmConfig
    from hsm.softhsm import ProvisionedToken
    from xksproxy.config import Config

DEMO_KEYSTORE = "demo"
DEMO_PREFIX = "/demo"
HSM_NAME = "softhsm-0"
TOKEN_LABEL = "xksproxy"  # noqa: S105 - a token label, not a secret
HEALTH_KEY_LABEL = "xks-health-test"
TLS_HOSTS = ["localhost", "127.0.0.1", "::1"]
# External key id -> PKCS#11 usage of the HSM key behind it.
DEMO_KEYS: dict[str, frozenset[str]] = {
    "demo": frozenset({"ENCRYPT", "DECRYPT"}),
    "demo-encrypt-only": frozenset({"ENCRYPT"}),
    "demo-decrypt-only": frozenset({"DECRYPT"}),
    "demo-no-usage": frozenset(),
}
CONFIG_NAME = "xksproxy.toml"
CONSOLE_NAME = "kms-console.json"


class InitError(Exception):
    """An expected failure of `init` (message is safe to show and says what to do)."""


class InitConfigError(InitError):
    """The existing config in the state directory cannot be read: an operator edit to fix."""


@dataclass(frozen=True)
class InitResult:
    """What `init` produced; `first` is true only on the run that wrote the config."""

    state_dir: Path
    config_path: Path
    console_path: Path
    first: bool
    keystore: str
    uri_path: str
    credential: sigv4.Credential
    keys: dict[str, frozenset[str]]
    created_keys: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- files


def is_embedded_default(config: Config) -> bool:
    """Whether ``config`` is the one ``init`` wrote: the demo key store on SoftHSMv2 tokens that
    ``init`` provisioned in the config's own directory (an evaluation set-up, not production)."""
    return any(ks.name == DEMO_KEYSTORE for ks in config.keystores) and all(
        h.token_label.startswith(TOKEN_LABEL)
        and "softhsm" in Path(h.module).name
        and h.env.get("SOFTHSM2_CONF", "").startswith(str(config.path.parent))
        for h in config.hsms
    )


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make the leaf 0700: it holds secrets or their neighbours."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _write_secret(path: Path, text: str) -> None:
    private_dir(path.parent)
    atomic_write(path, text.encode("ascii"), 0o600)


# --------------------------------------------------------------------------- TOML rendering


def toml_str(value: str) -> str:
    """A TOML basic string. JSON escaping is valid TOML except for DEL, which TOML wants escaped."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(toml_str(v) for v in values) + "]"


def render_config(
    *,
    module: Path,
    softhsm_conf: Path,
    pin_file: Path,
    cert_file: Path,
    key_file: Path,
    audit_file: Path,
    audit_key_file: Path,
    access_key_id: str,
    secret_file: Path,
    hsm_block: str = "",
    backend: str = HSM_NAME,
) -> str:
    """The embedded default as a complete config (same schema as conf/xksproxy.toml).

    Paths are absolute: the SoftHSMv2 configuration names its token directory absolutely anyway,
    and absolute paths read the same whatever the reader's working directory.
    """
    return f"""\
# Written by `xksproxy init` for the embedded SoftHSMv2 default.
# Every option is documented in conf/xksproxy.toml of the xksproxy source tree.
# Secrets are references ("file:..."), never literal values.

[server]
bind = "127.0.0.1:8443"
server = "granian"
workers = 0
plain_http = false
max_body_bytes = 262144
request_deadline_ms = 150
max_in_flight = 256
max_unauthenticated = 128
max_unauthenticated_per_client = 32
drain_grace_s = 10

[tls]
cert_file = {toml_str(str(cert_file))}
key_file = {toml_str(str(key_file))}
client_ca_file = ""
allowed_client_subjects = []

[metrics]
bind = "127.0.0.1:9464"

[control]
dir = "control"

[logging]
level = "info"
request_log = true

[audit]
file = {toml_str(str(audit_file))}
key = {toml_str("file:" + str(audit_key_file))}
rotate_bytes = 67108864
refuse_on_gap = true
keep_files = 16
anchor_hsm = ""
anchor_key_label = "xksproxy-audit-anchor"
checkpoint_interval_s = 60

[custody]
state_cache_s = 5

[health]
interval_s = 10
degraded_ms = 100
xks_proxy_vendor = "xksproxy"
xks_proxy_model = "xksproxy 0.1"
ekm_vendor = "SoftHSMv2"
fleet_size = 1

{hsm_block or _single_hsm(module, pin_file, softhsm_conf)}
[[keystore]]
name = {toml_str(DEMO_KEYSTORE)}
path_prefix = {toml_str(DEMO_PREFIX)}
hsm = {toml_str(backend)}
regions = []
keys = {toml_list(DEMO_KEYS)}
disabled_keys = []
enabled = true
[keystore.key_labels]
[keystore.quota]
rate = 0
burst = 0

[[keystore.credentials]]
access_key_id = {toml_str(access_key_id)}
secret = {toml_str("file:" + str(secret_file))}
"""


def _single_hsm(module: Path, pin_file: Path, softhsm_conf: Path) -> str:
    """The one [[hsm]] table of the default (``init --hsm-members N`` writes N instead)."""
    return f"""\
[[hsm]]
name = {toml_str(HSM_NAME)}
model = "SoftHSMv2"
module = {toml_str(str(module))}
token_label = {toml_str(TOKEN_LABEL)}
pin = {toml_str("file:" + str(pin_file))}
sessions = 4
mode = "inline"
iv_source = "rng"
health_key_label = {toml_str(HEALTH_KEY_LABEL)}
max_plaintext_bytes = 65536
[hsm.env]
SOFTHSM2_CONF = {toml_str(str(softhsm_conf))}
"""


def console_json(uri_path: str, credential: sigv4.Credential) -> bytes:
    """The file the AWS KMS console accepts when creating an external key store."""
    doc = {
        "XksProxyUriPath": uri_path,
        "XksProxyAuthenticationCredential": {
            "AccessKeyId": credential.access_key_id,
            "RawSecretAccessKey": credential.secret,
        },
    }
    return (json.dumps(doc, indent=2) + "\n").encode("ascii")


# --------------------------------------------------------------------------- init


def _softhsm_missing_message(what: str | os.PathLike[str] | None) -> str:
    where = f" ({os.fspath(what)} not found)" if what else ""
    return (
        f"SoftHSMv2 is not installed{where}; install it with: apt-get install softhsm2 "
        "(or run ./scripts/serve as root, which installs it)"
    )


def _provision(state_dir: Path) -> ProvisionedToken:
    """Provision the token, turning a missing SoftHSMv2 into an actionable message."""
    from hsm import softhsm

    try:
        token = softhsm.provision(state_dir, token_label=TOKEN_LABEL)
    except FileNotFoundError as exc:
        raise InitError(_softhsm_missing_message(exc.filename)) from exc
    except subprocess.CalledProcessError as exc:
        # Never str(exc): its command line carries the PINs given to softhsm2-util.
        raise InitError(
            f"softhsm2-util failed with exit code {exc.returncode} while provisioning the "
            f"token in {state_dir}"
        ) from exc
    module = Path(token.module_path)
    if not module.exists():
        raise InitError(_softhsm_missing_message(module))
    return token


def _ensure_keys(
    cfg: HsmConfig, *, demo: bool, replicable: bool = False
) -> tuple[dict[str, frozenset[str]], list[str]]:
    """The health key always; the demo keys only while the embedded default is being set up.

    Once the config exists, a demo key the operator deleted stays deleted: recreating it would
    silently bring back the label with *new* key material, so old ciphertext would look corrupt.
    Returns (usage of the demo keys present, labels created now).
    """
    from hsm import admin

    admin.ensure_health_key(cfg)
    existing = {k.label: frozenset(k.usage) for k in admin.list_keys(cfg)}
    created: list[str] = []
    for label, usage in DEMO_KEYS.items():
        if demo and label not in existing:
            admin.create_key(cfg, label, usage, replicable=replicable)
            existing[label] = usage
            created.append(label)
    return {label: existing[label] for label in DEMO_KEYS if label in existing}, created


def _provision_members(
    state_dir: Path, first: ProvisionedToken, members: int, created: list[str]
) -> str:
    """Members 1..N-1 (see :mod:`members_init`): tokens, health keys, replicated demo keys."""
    from hsm import admin, softhsm
    from hsm.replicate import replicate

    tokens, modules = [first], [first.module_path]
    source = first.hsm_config(HSM_NAME, health_key_label=HEALTH_KEY_LABEL)
    for i in range(1, members):
        tok = softhsm.provision(state_dir, token_label=members_init.token_label(i, TOKEN_LABEL))
        module = members_init.module_copy(state_dir, first.module_path, i)
        cfg = tok.hsm_config(
            members_init.member_name(i), module=module, health_key_label=HEALTH_KEY_LABEL
        )
        admin.ensure_health_key(cfg)
        if created:
            report = replicate(
                source, cfg, source_so_pin=first.so_pin_file.read_text().strip(), ids=created
            )
            if not report.ok:
                raise InitError("replicating the demo keys failed: " + "; ".join(report.problems))
        tokens.append(tok)
        modules.append(module)
    return members_init.hsm_tables(tokens, modules, HEALTH_KEY_LABEL, first.so_pin_file)


def _existing_credential(config_path: Path) -> tuple[str, str, sigv4.Credential]:
    """(store name, URI path, newest credential) of the first store in an existing config.

    Read with tomllib rather than the full config loader: `init` must keep working (and say
    "already initialised") even while the operator's edits make the config invalid for `serve`.
    """
    from xksproxy.config import ConfigError, resolve_secret

    try:
        doc = tomllib.loads(config_path.read_text(encoding="utf-8"))
        store = doc["keystore"][0]
        cred = store["credentials"][-1]
        where = f"{config_path}: keystore[0].credentials secret"
        secret = resolve_secret(cred["secret"], where, config_path.parent)
        return (
            store.get("name", DEMO_KEYSTORE),
            base_path(store.get("path_prefix", "")),
            sigv4.Credential(cred["access_key_id"], secret),
        )
    except ConfigError as exc:
        raise InitConfigError(str(exc)) from exc
    except (OSError, tomllib.TOMLDecodeError, KeyError, IndexError, TypeError) as exc:
        raise InitConfigError(
            f"{config_path} exists but its first [[keystore]] credential could not be read "
            f"({type(exc).__name__}: {exc}); fix the file or move it away and run init again"
        ) from exc


def init(state_dir: Path | None = None, *, members: int = 1) -> InitResult:
    """Bring `state_dir` to the embedded default; see the module docstring for the rules.

    Two inits on one directory at once (say, two `serve` started together) take turns on a lock
    file: otherwise both could create the same demo key twice or pair one's secret with the
    other's access key id.
    """
    state_dir = Path(state_dir or default_state_dir()).expanduser().absolute()
    private_dir(state_dir)
    fd = os.open(state_dir / ".init.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return _init_locked(state_dir, members)
    finally:
        os.close(fd)  # releases the lock


def _init_locked(state_dir: Path, members: int = 1) -> InitResult:
    secrets_dir = private_dir(state_dir / "secrets")
    tls_dir = private_dir(state_dir / "tls")
    audit_dir = private_dir(state_dir / "audit")
    config_path = state_dir / CONFIG_NAME
    console_path = state_dir / CONSOLE_NAME

    first = not config_path.exists()
    if not first and members > 1 and members_init.existing_members(config_path) != members:
        raise InitConfigError(
            f"{config_path} exists with another number of [[hsm]] members; "
            f"use a new --state-dir for --hsm-members {members}"
        )
    token = _provision(state_dir)
    keys, created_keys = _ensure_keys(
        token.hsm_config(HSM_NAME, health_key_label=HEALTH_KEY_LABEL),
        demo=first,
        replicable=members > 1,
    )
    hsm_block, backend = "", HSM_NAME
    if members > 1:
        hsm_block = _provision_members(state_dir, token, members, created_keys)
        backend = members_init.BACKEND

    audit_key = secrets_dir / "audit.key"
    if not audit_key.exists():
        _write_secret(audit_key, secrets.token_hex(32) + "\n")

    cert, key = tls_dir / "server.crt", tls_dir / "server.key"
    if not (cert.exists() and key.exists()):
        from xksproxy.runtime import tls

        tls.generate_self_signed(cert, key, TLS_HOSTS)

    if first:
        # Nothing references a previous attempt's secret yet: a fresh pair is always safe here.
        credential = sigv4.generate_credential()
        secret_file = secrets_dir / "demo-1.secret"
        _write_secret(secret_file, credential.secret + "\n")
        uri_path, store = base_path(DEMO_PREFIX), DEMO_KEYSTORE
        atomic_write(console_path, console_json(uri_path, credential), 0o600)
        text = render_config(
            module=Path(token.module_path),
            softhsm_conf=Path(token.conf_path),
            pin_file=Path(token.user_pin_file),
            cert_file=cert,
            key_file=key,
            audit_file=audit_dir / "xksproxy-audit.log",
            audit_key_file=audit_key,
            access_key_id=credential.access_key_id,
            secret_file=secret_file,
            hsm_block=hsm_block,
            backend=backend,
        )
        tomllib.loads(text)  # never write a config we could not read back ourselves
        atomic_write(config_path, text.encode("utf-8"), 0o600)
    else:
        store, uri_path, credential = _existing_credential(config_path)
        if not console_path.exists():
            atomic_write(console_path, console_json(uri_path, credential), 0o600)

    return InitResult(
        state_dir=state_dir,
        config_path=config_path,
        console_path=console_path,
        first=first,
        keystore=store,
        uri_path=uri_path,
        credential=credential,
        keys=keys,
        created_keys=created_keys,
    )


def usage_text(usage: Iterable[str]) -> str:
    """ "ENCRYPT, DECRYPT", or "none" for a key that may do nothing."""
    return ", ".join(ordered_key_usage(usage)) or "none"


def summary(result: InitResult, *, show_secret: bool = True) -> str:
    """Text for the terminal. The secret appears only on the first run, by design, and only
    when ``show_secret``: `serve` passes ``sys.stdout.isatty()``, because its stdout is also the
    JSON request log (journald under systemd) and a secret must never land in a log."""
    if not result.first:
        return (
            f"xksproxy: already initialised: {result.state_dir}\n"
            f"xksproxy: config {result.config_path}; key store {result.keystore} at "
            f"{result.uri_path}, access key id {result.credential.access_key_id} "
            f"(credential file: {result.console_path})"
        )
    keys = "\n".join(f"    {kid:<20} {usage_text(u)}" for kid, u in result.keys.items())
    return f"""\
xksproxy: initialised {result.state_dir}
  config file:       {result.config_path}
  KMS console file:  {result.console_path}
  TLS certificate:   {result.state_dir / "tls" / "server.crt"} (self-signed, for local tests)
  key store:         {result.keystore}
  URI path:          {result.uri_path}
  external keys (id, usage):
{keys}
{_credential_lines(result, show_secret)}"""


def _credential_lines(result: InitResult, show_secret: bool) -> str:
    if not show_secret:
        return (
            f"  demo credential:   AccessKeyId {result.credential.access_key_id}; its secret is in "
            f"{result.console_path} (owner-only), not printed: stdout is not a terminal"
        )
    return f"""\
  demo credential (printed once; kept in the KMS console file):
    AccessKeyId:        {result.credential.access_key_id}
    RawSecretAccessKey: {result.credential.secret}"""


def rewrite_console_if_it_names(
    config_path: Path, removed_access_key_id: str, uri_path: str, credential: sigv4.Credential
) -> bool:
    """After a credential was removed: if the KMS console file beside ``config_path`` still
    holds it (its secret included), rewrite it atomically for ``credential`` (the store's newest
    remaining one). True if it was rewritten. A console file naming another credential, or none
    at all, is left alone."""
    console = config_path.parent / CONSOLE_NAME
    try:
        doc = json.loads(console.read_text(encoding="utf-8"))
        named = doc["XksProxyAuthenticationCredential"]["AccessKeyId"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if named != removed_access_key_id:
        return False
    atomic_write(console, console_json(uri_path, credential), 0o600)
    return True
