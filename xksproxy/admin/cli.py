"""The `xksproxy` console script: argument parsing and dispatch, nothing else.

Each subcommand delegates to the module that owns the work (embedded, hsm.admin, server, audit,
doctor, credentials_ops); this file only turns arguments into calls and expected failures into
one-line messages with stable exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.
Tracebacks are for bugs, never for a missing file or a typo in the config.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from hsm.types import USAGE_PRESETS
from xksproxy import environment
from xksproxy.admin import audit_commands, custody_cli, embedded
from xksproxy.admin.keystore_lookup import KeystoreNotFound, keystore_index
from xksproxy.environment import DEFAULT_STATE_DIR_TEXT
from xksproxy.xks.protocol import ordered_key_usage

if TYPE_CHECKING:
    from hsm import HsmConfig
    from xksproxy.config import Config, KeystoreConfig

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """An expected failure: print `message`, exit with `code`."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _out(text: str) -> None:
    print(text, flush=True)


def _fail(message: str, code: int) -> NoReturn:
    raise CliError(message, code)


# --------------------------------------------------------------------------- config location


def _add_location(p: argparse.ArgumentParser) -> None:
    """--config FILE | --state-dir DIR, shared by every command that needs a config."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", type=Path, metavar="FILE", help="configuration file (TOML)")
    g.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help=f"state directory written by `xksproxy init` (default: {DEFAULT_STATE_DIR_TEXT})",
    )


def _config_path(args: argparse.Namespace) -> Path:
    """The config file named by --config, or the one `init` wrote in the state directory."""
    if args.config is not None:
        path = Path(args.config).expanduser()
        if not path.is_file():
            _fail(f"configuration file not found: {path}", EXIT_USAGE)
        return path.absolute()
    state_dir = Path(args.state_dir or environment.default_state_dir()).expanduser().absolute()
    path = state_dir / embedded.CONFIG_NAME
    if not path.is_file():
        _fail(
            f"no configuration in {state_dir}: run `xksproxy init --state-dir {state_dir}` "
            "first, or pass --config FILE",
            EXIT_USAGE,
        )
    return path


def _load(path: Path) -> Config:
    """Load and validate a config; ConfigError becomes a usage/config error (exit 2)."""
    from xksproxy.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        message = str(exc)  # some messages already start with the path: name it once
        _fail(message if message.startswith(f"{path}:") else f"{path}: {message}", EXIT_USAGE)
    except OSError as exc:
        _fail(f"{path}: cannot read the configuration: {exc.strerror}", EXIT_USAGE)


def _hsm_config(config: Config, name: str | None) -> HsmConfig:
    if not config.hsms:
        _fail("the configuration has no [[hsm]] table", EXIT_USAGE)
    if name is None:
        return config.hsms[0]
    if name in config.backends:  # a backend of several members: work on its first member
        return config.members(name)[0]
    for h in config.hsms:
        if h.name == name:
            return h
    names = ", ".join(h.name for h in config.hsms)
    _fail(f"no [[hsm]] named {name!r} in the configuration (have: {names})", EXIT_USAGE)


@contextmanager
def _module_errors(cfg: HsmConfig) -> Iterator[None]:
    """A PKCS#11 module that cannot be loaded is an operator problem: say which and why."""
    try:
        yield
    except OSError as exc:
        _fail(_module_problem(cfg, exc), EXIT_FAILURE)


def _module_problem(cfg: HsmConfig, exc: BaseException | None = None) -> str:
    where = f"[[hsm]] {cfg.name}: PKCS#11 module {cfg.module}"
    if Path(cfg.module).exists():
        return f"{where} cannot be used: {exc}"
    hint = "; install SoftHSMv2 with: apt-get install softhsm2" if "softhsm" in cfg.module else ""
    return f"{where} not found{hint}"


# A check that takes longer (a hanging network HSM) is abandoned; the workers then report it.
_HSM_START_CHECK_TIMEOUT_S = 60.0


def _hsm_start_problem(config_path: Path) -> str | None:
    """Open every [[hsm]] once (module, token, login) the way a worker will, in a child process
    (:mod:`xksproxy.admin.hsmcheck`: PKCS#11 must never be initialised in the launcher).

    Why: a wrong PIN or token label otherwise shows up as every worker failing its start-up and
    the server giving up after a crash loop, a dozen log lines deep. This turns it into one line
    naming the [[hsm]] and the cause. A check that cannot finish (a hanging network HSM) does not
    block serving: the workers then report it themselves.
    """
    import subprocess

    from xksproxy.admin.hsmcheck import PROBLEM_PREFIX

    try:
        done = subprocess.run(
            [sys.executable, "-m", "xksproxy.admin.hsmcheck", str(config_path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=_HSM_START_CHECK_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.splitlines() if line.startswith(PROBLEM_PREFIX)]
    return lines[-1] if lines else None


def _find_keystore(config: Config, wanted: str | None) -> KeystoreConfig:
    """A store by path prefix ("/demo") or name ("demo"); the only/first store when not given."""
    stores = config.keystores
    if not stores:
        _fail("the configuration has no [[keystore]] table", EXIT_USAGE)
    if wanted is None:
        return stores[0]
    try:
        return stores[keystore_index([(s.name, s.path_prefix) for s in stores], wanted)]
    except KeystoreNotFound as exc:
        _fail(str(exc), EXIT_USAGE)


# --------------------------------------------------------------------------- commands


def cmd_init(args: argparse.Namespace) -> int:
    result = _run_init(args.state_dir, getattr(args, "hsm_members", 1))
    _out(embedded.summary(result))
    if result.first:
        _out(f"  start it with:     xksproxy serve --state-dir {result.state_dir}")
    return EXIT_OK


def _run_init(state_dir: Path | None, members: int = 1) -> embedded.InitResult:
    try:
        return embedded.init(state_dir, members=members)
    except embedded.InitConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    except embedded.InitError as exc:
        _fail(str(exc), EXIT_FAILURE)
    except PermissionError as exc:
        _fail(f"permission denied: {exc.filename}", EXIT_FAILURE)
    except _hsm_errors() as exc:
        _fail(f"HSM: {exc}", EXIT_FAILURE)


def _hsm_errors() -> tuple[type[BaseException], ...]:
    """Expected failures from the HSM layer. Imported lazily: `except` evaluates this only when
    an exception is on its way, so commands that never touch an HSM do not load python-pkcs11."""
    from hsm.errors import HsmError

    return (HsmError,)


def cmd_serve(args: argparse.Namespace) -> int:
    if args.config is not None:
        path = _config_path(args)
    else:
        result = _run_init(args.state_dir)
        # stdout is also the request log (journald under systemd): the secret only on a terminal
        _out(embedded.summary(result, show_secret=sys.stdout.isatty()))
        path = result.config_path
    config = _load(path)  # precise config errors (exit 2) before the server starts any worker
    for h in config.hsms:  # a missing module would otherwise surface as a worker crash loop
        if not Path(h.module).exists():
            _fail(_module_problem(h), EXIT_FAILURE)
    problem = _hsm_start_problem(path)
    if problem:
        _fail(problem, EXIT_FAILURE)
    from xksproxy.config import ConfigError
    from xksproxy.runtime.server import serve as server

    try:
        return int(
            server(
                path,
                bind=args.bind,
                plain_http=True if args.plain_http else None,
                server=args.server,
                workers=args.workers,
            )
            or 0
        )
    except ConfigError as exc:
        _fail(f"{path}: {exc}", EXIT_USAGE)
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_keys_list(args: argparse.Namespace) -> int:
    cfg = _hsm_config(_load(_config_path(args)), args.hsm)
    from hsm import admin

    with _module_errors(cfg):
        keys = sorted(admin.list_keys(cfg), key=lambda k: k.label)
        if args.json:
            _out(
                json.dumps(
                    [
                        {
                            "id": k.label,
                            "usage": ordered_key_usage(k.usage),
                            "health_key": k.label == cfg.health_key_label,
                        }
                        for k in keys
                    ]
                )
            )
            return EXIT_OK
        width = max([len(k.label) for k in keys] + [2])
        _out(f"{'ID':<{width}}  USAGE")
        for k in keys:
            note = "  (health test key)" if k.label == cfg.health_key_label else ""
            base, _, version = k.label.partition("#v")  # resolver.version_label's form
            if version.isdigit():
                note = f"  (version {version} of {base})"
            _out(f"{k.label:<{width}}  {embedded.usage_text(k.usage)}{note}")
        return EXIT_OK


def cmd_keys_create(args: argparse.Namespace) -> int:
    config = _load(_config_path(args))
    from xksproxy.admin import replicate_cli

    backend = replicate_cli.multi_member(config, args.hsm)
    if backend is not None:  # several members: create on one, replicate to the rest
        _check_key_id(args.id)
        return replicate_cli.create_on_backend(config, backend, args.id, USAGE_PRESETS[args.usage])
    cfg = _hsm_config(config, args.hsm)
    from hsm import admin

    with _module_errors(cfg):
        _check_key_id(args.id)
        if any(k.label == args.id for k in admin.list_keys(cfg)):
            _fail(f"a key labelled {args.id!r} already exists on token {cfg.token_label!r}", 1)
        usage = USAGE_PRESETS[args.usage]
        admin.create_key(cfg, args.id, usage)
        _out(f"created key {args.id} on {cfg.name} (usage: {embedded.usage_text(usage)})")
        stores = _stores_serving(config, cfg.name, args.id)
        if stores:
            _out(f"key stores that may use it: {', '.join(stores)}")
        else:
            _out(
                f"note: no [[keystore]] on {cfg.name} lists {args.id!r} in keys (or key_labels); "
                "add it there so KMS can use it"
            )
        return EXIT_OK


def _stores_serving(config: Config, hsm_name: str, label: str) -> list[str]:
    """Names of the key stores through which KMS can reach the HSM key `label`."""
    from xksproxy.keys.keystores import health_key_labels
    from xksproxy.keys.resolver import KeyResolver

    health = health_key_labels(config)
    backend = config.backend_of(hsm_name)
    names = []
    for store in config.keystores:
        resolver = KeyResolver(store, health)
        if resolver.backend == backend and resolver.serves_label(label):
            names.append(f"{store.name} ({store.uri_path})")
    return names


def _check_key_id(key_id: str) -> None:
    """External key ids follow the XKS specification (the rule lives in the config loader)."""
    from xksproxy.config import valid_key_id

    if not valid_key_id(key_id):
        _fail(
            f"invalid key id {key_id!r}: use 1-128 characters of A-Z a-z 0-9 . - _",
            EXIT_USAGE,
        )


def cmd_keys_delete(args: argparse.Namespace) -> int:
    config = _load(_config_path(args))
    first = _hsm_config(config, args.hsm)
    # A backend (named, or the default) loses the key on every member, as `keys create` made it
    # on every member; naming one member deletes there only (the repair tool for drift).
    named_member = args.hsm is not None and args.hsm not in config.backends
    targets = [first] if named_member else config.members(config.backend_of(first.name))
    from hsm import admin
    from xksproxy.admin import custody_ops

    if args.id == first.health_key_label and not args.force:
        _fail(
            f"{args.id!r} is the health test key: GetHealthStatus needs it. "
            "Pass --force to delete it anyway.",
            EXIT_USAGE,
        )
    for cfg in targets:
        with _module_errors(cfg):
            if not any(k.label == args.id for k in admin.list_keys(cfg)):
                _fail(f"no key labelled {args.id!r} on token {cfg.token_label!r}", EXIT_FAILURE)
    for cfg in targets:
        with _module_errors(cfg):
            admin.delete_key(cfg, args.id)
            versions = custody_ops.forget(cfg, args.id)  # its versions and lifecycle object too
            _out(f"deleted key {args.id} from {cfg.name}")
            if versions:
                _out(f"deleted its other versions: {', '.join(versions)}")
    return EXIT_OK


@contextmanager
def _custody_target(args: argparse.Namespace) -> Iterator[tuple[Config, HsmConfig]]:
    """The configuration and token a custody command works on (see custody_cli)."""
    config = _load(_config_path(args))
    cfg = _hsm_config(config, args.hsm)
    with _module_errors(cfg):
        yield config, cfg


def cmd_credentials_new(args: argparse.Namespace) -> int:
    import sigv4

    c = sigv4.generate_credential()
    _out(json.dumps({"AccessKeyId": c.access_key_id, "RawSecretAccessKey": c.secret}))
    return EXIT_OK


def cmd_credentials_add(args: argparse.Namespace) -> int:
    from xksproxy.admin import credentials_ops

    return int(credentials_ops.main_add(_config_path(args), args.keystore))


def cmd_credentials_remove(args: argparse.Namespace) -> int:
    from xksproxy.admin import credentials_ops

    return int(credentials_ops.main_remove(_config_path(args), args.keystore, args.access_key_id))


def cmd_kms_config(args: argparse.Namespace) -> int:
    config = _load(_config_path(args))
    store = _find_keystore(config, args.keystore)
    if not store.credentials:
        _fail(f"key store {store.name!r} has no credentials", EXIT_USAGE)
    # Default: the newest credential (listed last), the one to hand KMS during a rotation.
    credential = store.credentials[-1]
    if args.access_key_id is not None:
        matches = [c for c in store.credentials if c.access_key_id == args.access_key_id]
        if not matches:
            _fail(f"key store {store.name!r} has no credential {args.access_key_id}", EXIT_USAGE)
        credential = matches[0]
    doc = embedded.console_json(store.uri_path, credential)
    sys.stdout.write(doc.decode("ascii"))
    sys.stdout.flush()
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from xksproxy.admin import doctor

    return int(doctor.main(_config_path(args)))


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xksproxy",
        description="AWS KMS External Key Store (XKS) proxy: AES-256-GCM inside your HSM.",
        epilog=environment.operator_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keep the epilog's table layout
    )
    parser.add_argument("--version", action="version", version=f"xksproxy {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("init", help="provision the embedded SoftHSMv2 default (idempotent)")
    p.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help=f"default: {DEFAULT_STATE_DIR_TEXT}",
    )
    p.add_argument(
        "--hsm-members",
        type=_members_count,
        default=1,
        metavar="N",
        help="SoftHSMv2 tokens in one backend, keys replicated (1-10; try failover locally)",
    )
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("serve", help="run the proxy (runs init first unless --config is given)")
    _add_location(p)
    p.add_argument("--bind", type=_bind_arg, metavar="HOST:PORT", help="override [server] bind")
    p.add_argument("--plain-http", action="store_true", help="no TLS (behind a trusted TLS LB)")
    p.add_argument("--server", choices=["granian", "hypercorn"], help="override [server] server")
    p.add_argument("--workers", type=_non_negative, metavar="N", help="0 = one per CPU core")
    p.set_defaults(func=cmd_serve)

    keys = sub.add_parser(
        "keys", help="AES-256 keys on a token: create, list, delete, rotate, lifecycle states"
    )
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    p = ksub.add_parser("list", help="list the keys on the token and what each may do")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_keys_list)
    p = ksub.add_parser("create", help="create an AES-256 key labelled ID")
    p.add_argument("id", metavar="ID", help="external key id (= HSM key label)")
    p.add_argument(
        "--usage",
        choices=list(USAGE_PRESETS),
        default="encrypt-decrypt",
        help="what the key may do: encrypt-decrypt (what KMS needs), encrypt, decrypt or none "
        "(default: %(default)s)",
    )
    p.set_defaults(func=cmd_keys_create)
    p = ksub.add_parser("delete", help="destroy the key labelled ID (irreversible)")
    p.add_argument("id", metavar="ID")
    p.add_argument("--force", action="store_true", help="allow deleting the health test key")
    p.set_defaults(func=cmd_keys_delete)
    custody_cli.register(ksub, _custody_target)  # rotate, versions, show, suspend, ... (#12)
    for p in ksub.choices.values():
        _add_location(p)
        p.add_argument("--hsm", metavar="NAME", help="[[hsm]] name (default: the first)")

    creds = sub.add_parser("credentials", help="SigV4 credentials for key stores")
    csub = creds.add_subparsers(dest="credentials_command", metavar="ACTION", required=True)
    p = csub.add_parser("new", help="print a fresh access key id and secret as JSON")
    p.set_defaults(func=cmd_credentials_new)
    p = csub.add_parser("add", help="add a fresh credential to a key store")
    _add_location(p)
    p.add_argument("--keystore", required=True, metavar="PREFIX", help="path prefix or name")
    p.set_defaults(func=cmd_credentials_add)
    p = csub.add_parser("remove", help="remove a credential from a key store")
    _add_location(p)
    p.add_argument("--keystore", required=True, metavar="PREFIX", help="path prefix or name")
    p.add_argument("access_key_id", metavar="AKID")
    p.set_defaults(func=cmd_credentials_remove)

    p = sub.add_parser("kms-config", help="print the KMS console JSON for a key store")
    _add_location(p)
    p.add_argument("--keystore", metavar="PREFIX", help="path prefix or name (default: the first)")
    p.add_argument("--access-key-id", metavar="AKID", help="which credential (default: the newest)")
    p.set_defaults(func=cmd_kms_config)

    audit_commands.register(sub, _add_location, _config_path)

    p = sub.add_parser("doctor", help="check the configuration, HSM, keys and TLS")
    _add_location(p)
    p.set_defaults(func=cmd_doctor)

    from xksproxy.admin import hsm_cli, replicate_cli  # HSM members (issue 13)

    hsm_cli.register(sub, _add_location)
    replicate_cli.register(ksub, _add_location)

    # Listed here for the overview; main() hands everything after the word to kmsemu's own
    # parser, so `xksproxy kms-emulator --help` is the emulator's complete help.
    sub.add_parser(
        KMS_EMULATOR,
        add_help=False,
        help="run a local AWS KMS endpoint whose external key stores call XKS proxies "
        "(see `xksproxy kms-emulator --help`)",
    )
    _errors_in_own_usage(parser)
    return parser


def _errors_in_own_usage(parser: argparse.ArgumentParser) -> None:
    """Record in each (sub)command's defaults which parser it is, so :func:`main` can report a
    mistyped option (``keys list --jsno``) with that command's usage, not the top level's."""
    parser.set_defaults(_parser=parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _errors_in_own_usage(child)


def _bind_arg(text: str) -> str:
    """``--bind``: checked by the one bind parser, so the error names the flag once."""
    from xksproxy.bind import parse_bind

    try:
        parse_bind(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xksproxy")
    except PackageNotFoundError:  # running from a source tree that was never pip-installed
        return "(source tree)"


def _non_negative(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return n


def _members_count(text: str) -> int:
    n = _non_negative(text)
    if not 1 <= n <= 10:
        raise argparse.ArgumentTypeError("must be 1 to 10 (GetHealthStatus lists at most 10)")
    return n


KMS_EMULATOR = "kms-emulator"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of `python -m xksproxy`."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == [KMS_EMULATOR]:
        # The emulator is its own package (it talks to proxies over HTTP only, like KMS): this
        # is the one place xksproxy reaches it, and only when asked.
        from kmsemu.cli import main as kmsemu_main

        return kmsemu_main(words[1:], prog=f"xksproxy {KMS_EMULATOR}")
    parser = build_parser()
    args, unknown = parser.parse_known_args(words)
    if unknown:  # argparse would blame the top level; the command that got them says it
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"xksproxy: error: {exc.message}", file=sys.stderr, flush=True)
        return exc.code
    except _hsm_errors() as exc:
        print(f"xksproxy: error: HSM: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
