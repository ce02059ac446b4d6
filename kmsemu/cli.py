"""``xksproxy kms-emulator`` / ``python -m kmsemu``: run the KMS emulator on a loopback port.

Start-up order matters for tests and scripts: state is opened and the credentials settled, the
socket is bound and listening, and only then is ``kmsemu: listening on http://HOST:PORT``
printed, so a caller that waits for that line can connect at once.

The AWS secret access key is printed only when stdout is a terminal, or with
``--print-credentials`` / ``--json``; otherwise the output names the owner-only file that holds
it (``<state-dir>/credentials.json``). It never goes to the log.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import secrets
import signal
import socket
import sys
from pathlib import Path

import sigv4
from kmsemu.operations import Emulator, Settings
from kmsemu.store import Store

DEFAULT_BIND = "127.0.0.1:4599"
DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT = "111122223333"
CREDENTIALS_FILE = "credentials.json"
_AKID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def default_state_dir() -> Path:
    env = os.environ.get("KMSEMU_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "xksproxy-kms-emulator"


def build_parser(prog: str = "kmsemu") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "A local AWS KMS endpoint (JSON 1.1, SigV4 for service 'kms') whose external key "
            "stores call real XKS proxies over HTTPS, as KMS does. Point boto3, the AWS CLI or "
            "any SDK at it with endpoint_url / --endpoint-url / AWS_ENDPOINT_URL_KMS."
        ),
        epilog=(
            "State (key stores, keys, KMS-side key material, the accepted AWS credentials) is "
            "kept in SQLite under --state-dir and survives restarts. The secret access key is "
            "written to <state-dir>/credentials.json (mode 0600); it is printed only on a "
            "terminal, with --print-credentials, or in --json output."
        ),
    )
    p.add_argument(
        "--bind",
        default=DEFAULT_BIND,
        metavar="HOST:PORT",
        help=f"address to listen on (default {DEFAULT_BIND}; port 0 picks a free one)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="state directory (default $KMSEMU_STATE_DIR, else "
        "~/.local/state/xksproxy-kms-emulator)",
    )
    p.add_argument(
        "--region",
        default=DEFAULT_REGION,
        help=f"the emulated KMS region: in ARNs, accepted in signatures and used to sign calls "
        f"to proxies (default {DEFAULT_REGION})",
    )
    p.add_argument(
        "--account-id",
        default=None,
        metavar="ID",
        help=f"12-digit AWS account id in ARNs (default: the stored one, else {DEFAULT_ACCOUNT})",
    )
    p.add_argument(
        "--user-name",
        default=None,
        metavar="NAME",
        help="IAM user name of the caller, sent to proxies as "
        "awsPrincipalArn arn:aws:iam::<account>:user/<NAME> (default: stored, else kmsemu)",
    )
    p.add_argument(
        "--access-key-id",
        default=None,
        metavar="AKID",
        help="AWS access key id to accept (default: the stored one, generated on first start)",
    )
    p.add_argument(
        "--secret-access-key",
        default=None,
        metavar="SECRET",
        help="AWS secret access key to accept (prefer $KMSEMU_SECRET_ACCESS_KEY: a command "
        "line is visible to other local users); requires --access-key-id",
    )
    p.add_argument(
        "--proxy-ca-file",
        default=None,
        metavar="PEM",
        help="CA certificate(s) that proxy TLS certificates must chain to (e.g. the embedded "
        "proxy's <proxy-state-dir>/tls/server.crt); default: the system trust store",
    )
    p.add_argument(
        "--allow-plain-http",
        action="store_true",
        help="allow key stores whose XksProxyUriEndpoint is http:// (KMS itself never allows it)",
    )
    p.add_argument(
        "--proxy-timeout-ms",
        type=int,
        default=250,
        metavar="MS",
        help="deadline per proxy call, retried once on timeout (default 250, as KMS)",
    )
    p.add_argument(
        "--print-credentials",
        action="store_true",
        help="print the secret access key even when stdout is not a terminal",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (endpoint, region, credentials incl. the secret) once "
        "listening, instead of the text lines",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="request log level (log lines go to stderr and never contain bodies or secrets)",
    )
    return p


def _parse_bind(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"--bind must be HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _new_credential() -> sigv4.Credential:
    """An AWS-looking pair: AKIA + 16 base32 characters, a 40-character base64 secret."""
    akid = "AKIA" + "".join(secrets.choice(_AKID_ALPHABET) for _ in range(16))
    secret = base64.b64encode(secrets.token_bytes(30)).decode("ascii")
    return sigv4.Credential(akid, secret)


def _write_private(path: Path, data: bytes) -> None:
    """Temp file (0600) + fsync + rename: readers never see a partial credentials file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def settle_identity(store: Store, args: argparse.Namespace) -> tuple[sigv4.Credential, str, str]:
    """The credential, account id and user name to use: flags win, then state, then new ones.

    Whatever is used is stored, so the next start without flags accepts the same credential.
    """
    secret = args.secret_access_key or os.environ.get("KMSEMU_SECRET_ACCESS_KEY")
    if args.access_key_id or secret:
        if not (args.access_key_id and secret):
            raise ValueError("--access-key-id and --secret-access-key go together")
        cred = sigv4.Credential(args.access_key_id, secret)
    else:
        akid, stored = store.get_setting("access_key_id"), store.get_setting("secret_access_key")
        cred = sigv4.Credential(akid, stored) if akid and stored else _new_credential()
    account = args.account_id or store.get_setting("account_id") or DEFAULT_ACCOUNT
    if not (len(account) == 12 and account.isdigit()):
        raise ValueError("--account-id must be 12 digits")
    user = args.user_name or store.get_setting("user_name") or "kmsemu"
    store.set_settings(
        {
            "access_key_id": cred.access_key_id,
            "secret_access_key": cred.secret,
            "account_id": account,
            "user_name": user,
        }
    )
    return cred, account, user


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def main(argv: list[str] | None = None, *, prog: str = "kmsemu") -> int:
    """Run the emulator until SIGINT/SIGTERM. Returns 0, or 2 for a usage/configuration error."""
    args = build_parser(prog).parse_args(argv)
    try:
        host, port = _parse_bind(args.bind)
        if args.proxy_ca_file and not Path(args.proxy_ca_file).is_file():
            raise ValueError(f"--proxy-ca-file {args.proxy_ca_file}: no such file")
        if not 10 <= args.proxy_timeout_ms <= 60000:
            raise ValueError("--proxy-timeout-ms must be between 10 and 60000")
        state_dir = (args.state_dir or default_state_dir()).expanduser().resolve()
        store = Store(state_dir)
        cred, account, user = settle_identity(store, args)
        sock = _listen(host, port)
    except (ValueError, OSError) as exc:
        print(f"kmsemu: {exc}", file=sys.stderr)
        return 2
    if host not in ("127.0.0.1", "::1", "localhost"):
        print(
            f"kmsemu: warning: listening on {host}, not loopback; anyone who can reach it and "
            "holds the credential can use the keys",
            file=sys.stderr,
        )
    settings = Settings(
        region=args.region,
        account_id=account,
        principal_arn=f"arn:aws:iam::{account}:user/{user}",
        proxy_ca_file=args.proxy_ca_file,
        allow_plain_http=args.allow_plain_http,
        proxy_deadline_s=args.proxy_timeout_ms / 1000,
    )
    bound_host, bound_port = sock.getsockname()[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    endpoint = f"http://{shown_host}:{bound_port}"
    cred_file = state_dir / CREDENTIALS_FILE
    _write_private(
        cred_file,
        json.dumps(
            {
                "EndpointUrl": endpoint,
                "Region": args.region,
                "AccessKeyId": cred.access_key_id,
                "SecretAccessKey": cred.secret,
            },
            indent=2,
        ).encode()
        + b"\n",
    )
    _announce(args, endpoint, cred, settings, cred_file)
    # Logging is set up only now: usage errors above leave the caller's logging untouched.
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    # httpx logs every request URL at INFO; our own request line already says what happened.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        asyncio.run(_serve(Emulator(store, settings), cred, sock))
    finally:
        store.close()
    return 0


def _announce(
    args: argparse.Namespace,
    endpoint: str,
    cred: sigv4.Credential,
    settings: Settings,
    cred_file: Path,
) -> None:
    if args.json:
        doc = {
            "endpoint": endpoint,
            "region": settings.region,
            "accountId": settings.account_id,
            "principalArn": settings.principal_arn,
            "accessKeyId": cred.access_key_id,
            "secretAccessKey": cred.secret,
            "credentialsFile": str(cred_file),
        }
        print(json.dumps(doc), flush=True)
        return
    show_secret = args.print_credentials or sys.stdout.isatty()
    print(f"kmsemu: listening on {endpoint}")
    print(f"kmsemu: region {settings.region}, principal {settings.principal_arn}")
    print(f"kmsemu: AWS_ACCESS_KEY_ID={cred.access_key_id}")
    if show_secret:
        print(f"kmsemu: AWS_SECRET_ACCESS_KEY={cred.secret}")
    else:
        print(f"kmsemu: AWS_SECRET_ACCESS_KEY is in {cred_file} (owner-only)")
    print(f"kmsemu: e.g. AWS_ENDPOINT_URL_KMS={endpoint} aws kms list-keys", flush=True)


async def _serve(emulator: Emulator, cred: sigv4.Credential, sock: socket.socket) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from kmsemu.app import create_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("kmsemu.server")
    config.graceful_timeout = 2
    await serve(create_app(emulator, [cred]), config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
