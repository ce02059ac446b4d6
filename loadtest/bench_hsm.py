"""HSM pool throughput and latency, next to a bare single-session loop measured in the same run.

    .venv/bin/python loadtest/bench_hsm.py [--seconds 3] [--tasks 32] [--sessions 4]
                                           [--slow-ms 2]
    .venv/bin/python loadtest/bench_hsm.py --calls [--rounds 5] [--iterations 2000]

Provisions a throw-away SoftHSMv2 token in a temp dir (removed at exit). Per operation (encrypt =
IV from the session's IV buffer + AES-GCM encrypt, decrypt = AES-GCM decrypt; 32-byte plaintext,
64-byte AAD, i.e. an XKS data key):

* bare:   one session, one thread, the same ctypes calls in a plain loop (no pool, no asyncio);
* inline / threaded: HsmPool with ``--tasks`` concurrent asyncio tasks.

With ``--slow-ms N`` the runs are repeated through the fault-injection shim (tests/support) adding
N ms to every crypto call, i.e. a network HSM, where threaded mode should win by ~``sessions``x.
Figures are ratios against the bare loop of the same run: the machine is shared and noisy.

``--calls`` instead times each PKCS#11 call of an Encrypt on one bare session (median us per
call over ``--rounds`` interleaved rounds of ``--iterations`` calls each): C_GenerateRandom for
one IV and for a batch of ``hsm.ivbuffer.IV_BATCH`` IVs, AES-GCM encrypt, the verifying decrypt,
and ``IvBuffer.take`` (what an Encrypt pays for its IV with the buffer, refills included).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from hsm import HsmConfig, HsmPool, admin, keys, module  # noqa: E402
from hsm.gcm import Gcm  # noqa: E402
from hsm.ivbuffer import IV_BATCH, IvBuffer  # noqa: E402
from hsm.limits import IV_BYTES  # noqa: E402
from hsm.softhsm import provision  # noqa: E402

PLAINTEXT = os.urandom(32)


@dataclasses.dataclass(frozen=True)
class Run:
    """One measured run: operations per second and per-call latencies (microseconds)."""

    ops_s: float
    enc: list[float]
    dec: list[float]


AAD = os.urandom(64)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6


@contextlib.contextmanager
def bare_session(cfg: HsmConfig) -> Iterator[tuple[Gcm, int]]:
    """One session on ``cfg``'s token outside any pool: its :class:`Gcm` and the bench key's
    handle; closed and released however the block ends."""
    mod = module.acquire(cfg.module, cfg.env)
    try:
        session = mod.open_session(mod.find_token(cfg.token_label), cfg.pin)
        try:
            fl, h = mod.functions, session.handle
            yield Gcm(fl, h), keys.resolve(fl, h, "bench").handle
        finally:
            mod.functions.C_CloseSession(session.handle)
    finally:
        module.release(mod)


def bare(cfg: HsmConfig, seconds: float) -> Run:
    with bare_session(cfg) as (ctx, key):
        ivs = IvBuffer()
        enc: list[float] = []
        dec: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            iv = ivs.take(ctx.random_into)  # as the pool does for iv_source = "rng"
            _, ct, tag = ctx.encrypt(key, iv, AAD, PLAINTEXT)
            t1 = time.perf_counter()
            assert ctx.decrypt(key, iv, AAD, ct, tag) == PLAINTEXT
            t2 = time.perf_counter()
            enc.append(t1 - t0)
            dec.append(t2 - t1)
    return Run((len(enc) + len(dec)) / seconds, enc, dec)


async def pooled(cfg: HsmConfig, seconds: float, tasks: int) -> Run:
    serialize = os.environ.pop("XKSPROXY_PKCS11_SERIALIZE", None)
    if cfg.name.endswith("+threads"):  # see main(): really use worker threads on SoftHSMv2
        os.environ["XKSPROXY_PKCS11_SERIALIZE"] = "0"
    pool = HsmPool(cfg)
    try:
        await pool.start()
    finally:
        os.environ.pop("XKSPROXY_PKCS11_SERIALIZE", None)
        if serialize is not None:
            os.environ["XKSPROXY_PKCS11_SERIALIZE"] = serialize
    enc: list[float] = []
    dec: list[float] = []
    end = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            r = await pool.encrypt("bench", PLAINTEXT, AAD, deadline=time.monotonic() + 10)
            t1 = time.perf_counter()
            back = await pool.decrypt(
                "bench",
                iv=r.iv,
                ciphertext=r.ciphertext,
                tag=r.tag,
                aad=AAD,
                deadline=time.monotonic() + 10,
            )
            t2 = time.perf_counter()
            assert back == PLAINTEXT
            enc.append(t1 - t0)
            dec.append(t2 - t1)

    try:
        await asyncio.gather(*(worker() for _ in range(tasks)))
    finally:
        await pool.close()
    return Run((len(enc) + len(dec)) / seconds, enc, dec)


def row(name: str, runs: list[Run], ratios: list[float]) -> str:
    """Median run of several (by ops/s) and the median of the per-round ratios to bare."""
    runs = sorted(runs, key=lambda r: r.ops_s)
    result = runs[len(runs) // 2]
    enc, dec = result.enc, result.dec
    ops = result.ops_s
    ratio = statistics.median(ratios)
    return (
        f"| {name:<30} | {ops:>9,.0f} | {ratio:>5.2f}x | {pct(enc, 0.5):>7.0f} | "
        f"{pct(enc, 0.99):>7.0f} | {pct(dec, 0.5):>7.0f} | {pct(dec, 0.99):>7.0f} |"
    )


def rounds(
    variants: dict[str, HsmConfig | None], cfg_bare: HsmConfig, seconds: float, tasks: int, n: int
) -> None:
    """Run bare + each pool variant ``n`` times, interleaved, so load drift hits all alike."""
    results: dict[str, list[Run]] = {"bare": []}
    ratios: dict[str, list[float]] = {"bare": []}
    for _ in range(n):
        base = bare(cfg_bare, seconds)
        results["bare"].append(base)
        ratios["bare"].append(1.0)
        for name, cfg in variants.items():
            assert cfg is not None
            r = asyncio.run(pooled(cfg, seconds, tasks))
            results.setdefault(name, []).append(r)
            ratios.setdefault(name, []).append(r.ops_s / base.ops_s)
    for name in results:
        label = "bare single-session loop" if name == "bare" else name
        print(row(label, results[name], ratios[name]), flush=True)
    best_bare = max(r.ops_s for r in results["bare"])
    best = ", ".join(
        f"{name} {max(r.ops_s for r in runs) / best_bare:.2f}x"
        for name, runs in results.items()
        if name != "bare"
    )
    print(f"# best-of-{n} ratios to the best bare run (robust to load spikes): {best}", flush=True)


def _median_us(call: Callable[[], object], iterations: int) -> float:
    """Median wall time of ``call`` in microseconds, each call timed on its own."""
    samples = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


def calls(cfg: HsmConfig, n_rounds: int, iterations: int) -> None:
    """Print a markdown table: median us per PKCS#11 call of an Encrypt, on one bare session."""
    with bare_session(cfg) as (ctx, key):
        iv = ctx.random(IV_BYTES)
        _, ct, tag = ctx.encrypt(key, iv, AAD, PLAINTEXT)
        ivs = IvBuffer()
        batch = IV_BATCH * IV_BYTES
        # name -> (the call, IVs it yields: the "per IV" column; 0 for the crypto calls)
        variants: dict[str, tuple[Callable[[], object], int]] = {
            "rng": (lambda: ctx.random(IV_BYTES), 1),
            "batch": (lambda: ctx.random(batch), IV_BATCH),
            "encrypt": (lambda: ctx.encrypt(key, iv, AAD, PLAINTEXT), 0),
            "decrypt": (lambda: ctx.decrypt(key, iv, AAD, ct, tag), 0),
            "take": (lambda: ivs.take(ctx.random_into), 1),
        }
        labels = {
            "rng": f"C_GenerateRandom({IV_BYTES})",
            "batch": f"C_GenerateRandom({batch})",
            "encrypt": "encrypt (C_EncryptInit + C_Encrypt)",
            "decrypt": "decrypt (C_DecryptInit + C_Decrypt)",
            "take": "IvBuffer.take (refills amortised)",
        }
        medians: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(n_rounds):  # interleaved: load drift hits every call alike
            for name, (call, _ivs) in variants.items():
                medians[name].append(_median_us(call, iterations))
    us = {name: statistics.median(m) for name, m in medians.items()}
    print(
        f"# SoftHSMv2, one bare session, {n_rounds} interleaved rounds x {iterations} calls; "
        f"32-byte plaintext, 64-byte AAD; median of the per-round medians"
    )
    print("| call | median us/call | per IV |")
    print("|---|---|---|")
    for name, (_call, per) in variants.items():
        per_iv = f"{us[name] / per:.2f}" if per else ""
        print(f"| {labels[name]} | {us[name]:.2f} | {per_iv} |")
    before = us["rng"] + us["encrypt"] + us["decrypt"]
    after = us["take"] + us["encrypt"] + us["decrypt"]
    print(
        f"# Encrypt with CDIV, HSM calls: {before:.1f} us (RNG + encrypt + decrypt) -> "
        f"{after:.1f} us with the IV buffer = {after / before:.2f}x "
        f"(saves {before - after:.1f} us, {1 - after / before:.0%})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=32)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument(
        "--slow-ms",
        type=int,
        default=0,
        help="also run through the fault shim adding N ms per crypto call",
    )
    ap.add_argument(
        "--calls", action="store_true", help="time each PKCS#11 call of an Encrypt instead"
    )
    ap.add_argument("--iterations", type=int, default=2000, help="calls per round (--calls)")
    args = ap.parse_args()
    state = tempfile.mkdtemp(prefix="bench-hsm-")
    try:
        run(args, state)
    finally:
        shutil.rmtree(state, ignore_errors=True)  # the throw-away token


def run(args: argparse.Namespace, state: str) -> None:
    """Provision the throw-away token in ``state`` and run what ``args`` ask for."""
    token = provision(state, "bench")
    cfg = token.hsm_config(sessions=args.sessions)
    admin.create_key(cfg, "bench")
    admin.ensure_health_key(cfg)
    if args.calls:
        calls(cfg, args.rounds, args.iterations)
        return
    print(
        f"# SoftHSMv2, {os.cpu_count()} CPUs, {args.rounds} interleaved rounds of "
        f"{args.seconds:g}s per run (median shown), {args.tasks} tasks, {args.sessions} "
        f"sessions; ops/s counts encrypts + decrypts; latencies in us"
    )
    print("| run | ops/s | vs bare | enc p50 | enc p99 | dec p50 | dec p99 |")
    print("|---|---|---|---|---|---|---|")
    # On SoftHSMv2 "threaded" runs inline (its calls are serialised); the last variant forces
    # real worker threads calling the module in parallel (XKSPROXY_PKCS11_SERIALIZE=0).
    rounds(
        {
            "pool inline": dataclasses.replace(cfg, mode="inline"),
            "pool threaded (runs inline)": dataclasses.replace(cfg, mode="threaded"),
            "pool threaded, SERIALIZE=0": dataclasses.replace(
                cfg, mode="threaded", name=cfg.name + "+threads"
            ),
        },
        cfg,
        args.seconds,
        args.tasks,
        args.rounds,
    )
    if args.slow_ms:
        # tests/support is on sys.path (above); mypy checks loadtest/ without tests/.
        from support.faultshim import FaultShim  # type: ignore[import-not-found]

        shim = FaultShim.create(state)
        shim.set("delay", delay_ms=args.slow_ms)
        slow = shim.hsm_config(cfg)
        time.sleep(0.05)
        print(
            f"# through the fault shim: +{args.slow_ms} ms per crypto call (network HSM); "
            f"'vs bare' = against a bare loop on the same slow module"
        )
        rounds(
            {
                f"pool {m}, +{args.slow_ms} ms/call": dataclasses.replace(slow, mode=m)
                for m in ("inline", "threaded")
            },
            slow,
            args.seconds,
            args.tasks,
            1,
        )


if __name__ == "__main__":
    main()
