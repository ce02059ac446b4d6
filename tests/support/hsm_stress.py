"""Multi-threaded PKCS#11 stress run, executed as a *subprocess* by tests/hsm (it may crash).

    python hsm_stress.py --init stock|locking --threads N --ops N --token LABEL --pin-file F
                         --key LABEL [--module PATH]       (SOFTHSM2_CONF from the environment)

Both variants use python-pkcs11 sessions (one per thread) and its AES-GCM encrypt/decrypt; they
differ only in how the module is initialised: ``stock`` = ``pkcs11.lib()`` (``C_Initialize(NULL)``),
``locking`` = ``hsm.module`` (``CKF_OS_LOCKING_OK``). Exit 0 and "OK <n>" when every round trip
returned the original plaintext; a wrong result exits 3; a heap corruption kills the process.
The caller puts the checkout on PYTHONPATH (for ``hsm``); this script changes no import path.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

import pkcs11
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--init", choices=("stock", "locking"), required=True)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--module", default="/usr/lib/softhsm/libsofthsm2.so")
    ap.add_argument("--token", required=True)
    ap.add_argument("--pin-file", required=True)
    ap.add_argument("--key", required=True)
    args = ap.parse_args()
    pin = Path(args.pin_file).read_text().strip()
    if args.init == "stock":
        lib = pkcs11.lib(args.module)
    else:
        from hsm import module

        lib = module.acquire(args.module, {}).lib
    token = lib.get_token(token_label=args.token)
    first = token.open(user_pin=pin)  # login is per token: later sessions inherit it
    sessions = [first] + [token.open() for _ in range(args.threads - 1)]
    failures: list[str] = []
    start = threading.Barrier(args.threads)

    def work(session: pkcs11.Session) -> None:
        key = session.get_key(object_class=ObjectClass.SECRET_KEY, label=args.key)
        assert key[Attribute.VALUE_LEN] == 32
        start.wait()
        for i in range(args.ops):
            plaintext = os.urandom(1 + i % 300)
            aad = os.urandom(i % 64)
            iv = session.generate_random(96)
            params = GCMParams(iv, aad, 128)
            sealed = key.encrypt(plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=params)
            opened = key.decrypt(sealed, mechanism=Mechanism.AES_GCM, mechanism_param=params)
            if opened != plaintext:
                failures.append("wrong plaintext")
                return

    threads = [threading.Thread(target=work, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        print("WRONG", len(failures), flush=True)
        return 3
    print("OK", args.threads * args.ops, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
