"""Locust scenario at the KMS level: GenerateDataKey + Decrypt through the KMS emulator.

Each request is a real KMS JSON 1.1 call (SigV4 for service ``kms``) to ``kmsemu``, which does
the KMS-side layer and calls the XKS proxy (SigV4 ``kms-xks-proxy``, TLS, 250 ms deadline), so
the figures include everything a KMS caller sees except the Internet. Mix (weights):
GenerateDataKey 50 (AES_256, with an encryption context), Decrypt 50 (of data keys this user
made). One keep-alive connection per user.

Target (command line or env): ``--host http://127.0.0.1:4599`` (the emulator), the key
(``--kms-key-id`` / ``$KMS_KEY_ID``: key id, ARN or alias of an EXTERNAL_KEY_STORE key) and the
credentials: ``--kmsemu-state-dir`` / ``$KMSEMU_STATE_DIR`` (reads its credentials.json) or
``$AWS_ACCESS_KEY_ID`` + ``$AWS_SECRET_ACCESS_KEY``; region ``$KMS_REGION`` (default us-east-1).

    locust -f loadtest/kms_locustfile.py --headless --host http://127.0.0.1:4599 \\
        --kmsemu-state-dir DIR --kms-key-id alias/load -u 10 -r 10 -t 30s

Both levels side by side, p99 of each printed (starts an embedded proxy and an emulator, creates
a key store and a key, runs the direct XKS mix of loadtest/locustfile.py, then this one)::

    python -m loadtest.kms_locustfile --duration 20 --users 8
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from locust import FastHttpUser, events, task

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sigv4

REPO = Path(__file__).resolve().parents[1]


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--kms-key-id", default=None, help="same as $KMS_KEY_ID")
    parser.add_argument("--kmsemu-state-dir", default=None, help="same as $KMSEMU_STATE_DIR")


@events.init.add_listener
def _configure(environment, **_kw) -> None:
    opts = environment.parsed_options
    if opts is None:
        return
    if getattr(opts, "kms_key_id", None):
        os.environ["KMS_KEY_ID"] = opts.kms_key_id
    if getattr(opts, "kmsemu_state_dir", None):
        os.environ["KMSEMU_STATE_DIR"] = opts.kmsemu_state_dir


def _credential() -> sigv4.Credential:
    state = os.environ.get("KMSEMU_STATE_DIR")
    if state:
        doc = json.loads((Path(state) / "credentials.json").read_text())
        return sigv4.Credential(doc["AccessKeyId"], doc["SecretAccessKey"])
    akid, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not (akid and secret):
        raise SystemExit("set KMSEMU_STATE_DIR or AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY")
    return sigv4.Credential(akid, secret)


class KmsUser(FastHttpUser):
    """One SDK-like caller: GenerateDataKey, then Decrypt of the data keys it made."""

    abstract = False

    def on_start(self) -> None:
        self.key_id = os.environ.get("KMS_KEY_ID") or ""
        if not self.key_id:
            raise SystemExit("set --kms-key-id or KMS_KEY_ID")
        self.cred = _credential()
        self.region = os.environ.get("KMS_REGION", "us-east-1")
        self.hostport = (self.host or "").split("://", 1)[-1].rstrip("/")
        self.made: deque[str] = deque(maxlen=64)
        self._generate()

    def _call(self, op: str, doc: dict):
        body = json.dumps(doc).encode()
        headers = {
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": f"TrentService.{op}",
        }
        headers.update(
            sigv4.sign(
                method="POST",
                host=self.hostport,
                path="/",
                headers=headers,
                body=body,
                credential=self.cred,
                region=self.region,
                service="kms",
            )
        )
        return self.client.post(
            "/",
            # locust annotates data as str | dict but documents and sends bytes unchanged, which
            # the signature needs (it covers these exact bytes).
            data=body,  # type: ignore[arg-type]
            headers=headers,
            name=op,
            catch_response=True,
        )

    @task(50)
    def generate_data_key(self) -> None:
        self._generate()

    def _generate(self) -> None:
        with self._call(
            "GenerateDataKey",
            {"KeyId": self.key_id, "KeySpec": "AES_256", "EncryptionContext": {"load": "test"}},
        ) as r:
            if r.status_code == 200:
                self.made.append(json.loads(r.content)["CiphertextBlob"])
                r.success()
            else:
                r.failure(f"{r.status_code} {(r.text or '')[:200]}")

    @task(50)
    def decrypt(self) -> None:
        if not self.made:
            return self._generate()
        blob = self.made[0]
        self.made.rotate(-1)
        with self._call(
            "Decrypt", {"CiphertextBlob": blob, "EncryptionContext": {"load": "test"}}
        ) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code} {(r.text or '')[:200]}")
                return
            n = len(base64.b64decode(json.loads(r.content)["Plaintext"]))
            if n == 32:
                r.success()
            else:  # never the body: it holds the data key
                r.failure(f"200 with a plaintext of {n} bytes, not 32")


# ---- python -m loadtest.kms_locustfile: both levels in one run, p99 of each


def _run(user_class, host: str, users: int, duration: float) -> dict:
    import gevent
    from locust.env import Environment

    env = Environment(user_classes=[user_class], host=host, events=events)
    runner = env.create_local_runner()
    runner.start(users, spawn_rate=users)
    gevent.spawn_later(duration, runner.quit)
    runner.greenlet.join()
    total = env.stats.total
    return {
        "requests": total.num_requests,
        "failures": total.num_failures,
        "rate": total.num_requests / duration,
        "p50": total.get_response_time_percentile(0.5),
        "p99": total.get_response_time_percentile(0.99),
        "by_name": {
            name: s.get_response_time_percentile(0.99)
            for (name, _m), s in sorted(env.stats.entries.items())
        },
        # what failed, by request name and message (a non-200 answer's status and the first 200
        # characters of its body, a KMS error; a wrong 200 is described, never quoted)
        "failure_kinds": {
            f"{e.name}: {str(e.error)[:160]}": e.occurrences for e in env.stats.errors.values()
        },
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def emulator_process(state_dir: Path, ca_file: Path) -> Iterator[str]:
    """A ``python -m kmsemu`` child on a free loopback port; yields its URL."""
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    err = (state_dir.parent / "kmsemu.stderr").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kmsemu",
            "--bind",
            f"127.0.0.1:{port}",
            "--state-dir",
            str(state_dir),
            "--proxy-ca-file",
            str(ca_file),
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "kmsemu: listening on" in line:
                break
        else:
            raise SystemExit("kmsemu did not start; see " + str(state_dir.parent / "kmsemu.stderr"))
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(15)
        err.close()


def _create_key(emulator_url: str, state_dir: Path, proxy_url: str, proxy_state: Path) -> str:
    import boto3

    creds = json.loads((state_dir / "credentials.json").read_text())
    console = json.loads((proxy_state / "kms-console.json").read_text())
    kms = boto3.client(
        "kms",
        endpoint_url=emulator_url,
        region_name="us-east-1",
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
    )
    ks = kms.create_custom_key_store(
        CustomKeyStoreName="load",
        CustomKeyStoreType="EXTERNAL_KEY_STORE",
        XksProxyUriEndpoint=proxy_url,
        XksProxyUriPath=console["XksProxyUriPath"],
        XksProxyConnectivity="PUBLIC_ENDPOINT",
        XksProxyAuthenticationCredential=console["XksProxyAuthenticationCredential"],
    )["CustomKeyStoreId"]
    kms.connect_custom_key_store(CustomKeyStoreId=ks)
    state = kms.describe_custom_key_stores(CustomKeyStoreId=ks)["CustomKeyStores"][0]
    if state["ConnectionState"] != "CONNECTED":
        raise SystemExit(f"key store did not connect: {state.get('ConnectionErrorCode')}")
    return kms.create_key(Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=ks, XksKeyId="demo")[
        "KeyMetadata"
    ]["Arn"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.kms_locustfile",
        description="p99 of the direct XKS mix and of the KMS-level "
        "mix through kmsemu, on a fresh embedded proxy",
    )
    p.add_argument("--duration", type=float, default=20, help="seconds per scenario (<= 300)")
    p.add_argument("--users", type=int, default=8, help="concurrent users (connections)")
    args = p.parse_args(argv)
    if not 0 < args.duration <= 300:
        p.error("--duration must be in (0, 300]")
    from loadtest import locustfile
    from loadtest.embedded_server import embedded_server

    with tempfile.TemporaryDirectory() as tmp, embedded_server() as proxy:
        os.environ["XKS_STATE_DIR"] = str(proxy.state_dir)
        locustfile.target(proxy.url)
        direct = _run(locustfile.XksUser, proxy.url, args.users, args.duration)
        emu_state = Path(tmp) / "kmsemu"
        with emulator_process(emu_state, proxy.state_dir / "tls" / "server.crt") as url:
            os.environ["KMS_KEY_ID"] = _create_key(url, emu_state, proxy.url, proxy.state_dir)
            os.environ["KMSEMU_STATE_DIR"] = str(emu_state)
            time.sleep(0.2)
            kms_level = _run(KmsUser, url, args.users, args.duration)
    for label, f in (
        ("direct XKS (loadtest/locustfile.py)", direct),
        ("KMS level via kmsemu (loadtest/kms_locustfile.py)", kms_level),
    ):
        print(
            f"{label}: requests={f['requests']} failures={f['failures']} "
            f"rate={f['rate']:.0f}/s p50={f['p50']:.0f} ms p99={f['p99']:.0f} ms"
        )
        for name, p99 in f["by_name"].items():
            print(f"  {name:24s} p99={p99:.0f} ms")
        for kind, n in f["failure_kinds"].items():
            print(f"  failed x{n}: {kind}")
    return 1 if direct["failures"] or kms_level["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
