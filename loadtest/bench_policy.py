"""Cost of one secondary-authorization decision, every variant measured in the same run.

    .venv/bin/python loadtest/bench_policy.py [--rounds 5] [--seconds 0.5] [--distinct 1000]

Variants, per request (all through the public entry points, in-process, single thread):

* no policy:        what dispatch does for a store without one (``store.policy is None``);
* old deny rules:   the pre-Cedar evaluator (``fnmatch`` over the rules, kept here verbatim as
                    the baseline) with the same 3 rules as the Cedar variants' translation;
* cedar, cached:    ``StorePolicy.check`` answering from its LRU decision cache (the steady
                    state: KMS repeats principals, keys and VPCs);
* cedar, uncached:  ``StorePolicy.check`` with every request distinct (``--distinct`` requests
                    cycling through a cache too small to hold them): one ``is_authorized`` on
                    the reused PolicySet and Entities handles each time;
* cedar, text each call: ``cedarpy.is_authorized`` given the policy *text* (what building the
                    PolicySet once per load avoids).

Policies: ``conf/policies/demo.cedar`` (3 policies) plus 3 translated deny rules = 6, and a
13-policy set (the design note's figure). Figures are medians of ``--rounds`` interleaved rounds,
printed as µs per decision and as ratios against the old deny rules of the same run: the machine
is shared and noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from fnmatch import fnmatchcase
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import cedarpy  # noqa: E402

from xksproxy.authz import CompiledPolicy, compile_policy, model  # noqa: E402
from xksproxy.config import DenyRule  # noqa: E402
from xksproxy.keys.policy import PolicyDenied, StorePolicy  # noqa: E402
from xksproxy.keys.resolver import KeyRef  # noqa: E402
from xksproxy.xks import operations  # noqa: E402
from xksproxy.xks.protocol import RequestMetadata  # noqa: E402

RULES = [
    DenyRule("other-account", {"principal": "arn:aws:iam::999999999999:*"}),
    DenyRule("no-ebs-decrypt", {"operation": "Decrypt", "via_service": "ebs"}),
    DenyRule("outside-vpc", {"source_vpc": "vpc-bad*"}),
]
KEY = KeyRef("demo", "demo", "softhsm-0", "demo")


def old_first_match(rules: list[DenyRule], meta: RequestMetadata, key_id: str) -> DenyRule | None:
    """The pre-Cedar ``xksproxy.keys.policy.first_match``, verbatim (the baseline)."""
    if not rules:
        return None
    values = {
        "principal": meta.aws_principal_arn or "",
        "operation": meta.kms_operation,
        "key_arn": meta.kms_key_arn or "",
        "via_service": meta.kms_via_service or "",
        "source_vpc": meta.aws_source_vpc or "",
        "source_vpce": meta.aws_source_vpce or "",
        "key_id": key_id,
    }
    for rule in rules:
        if all(fnmatchcase(values[f], pattern) for f, pattern in rule.fields.items()):
            return rule
    return None


def requests(n: int) -> list[RequestMetadata]:
    return [
        RequestMetadata(
            f"r{i}",
            "GenerateDataKey",
            f"arn:aws:iam::111122223333:role/App{i}",
            "arn:aws:kms:eu-west-1:111122223333:key/1",
            "rds",
            "vpc-0good",
            "vpce-0demo1",
        )
        for i in range(n)
    ]


def thirteen_policies(path: Path) -> Path:
    lines = ['@id("p0")\npermit (principal, action, resource);']
    lines += [
        f'@id("f{i}")\nforbid (principal, action, resource)\n'
        f'when {{ context.awsPrincipalArn like "arn:aws:iam::{i:012d}:*" }};'
        for i in range(1, 13)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    end = start + seconds
    while True:
        for _ in range(50):
            fn()
        n += 50
        now = time.perf_counter()
        if now >= end:
            return (now - start) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.5, help="per variant per round")
    ap.add_argument("--distinct", type=int, default=1000, help="distinct requests (uncached)")
    args = ap.parse_args(argv)

    import tempfile

    metas = requests(args.distinct)
    one = metas[0]
    rules_as_pairs = [(r.name, r.fields) for r in RULES]
    demo = compile_policy(ROOT / "conf" / "policies" / "demo.cedar", rules_as_pairs)
    with tempfile.TemporaryDirectory() as tmp:
        big = compile_policy(thirteen_policies(Path(tmp) / "p13.cedar"))

    def cedar_variants(compiled: CompiledPolicy, tag: str) -> dict[str, Callable[[], object]]:
        cached = StorePolicy(compiled, "demo")
        uncached = StorePolicy(compiled, "demo", cache_size=max(1, args.distinct // 10))
        cycle = iter(range(1 << 62))
        request_dict = model.request(
            "Encrypt",
            "GenerateDataKey",
            one.aws_principal_arn or "",
            "demo",
            "",
            "",
            "",
            "",
            "eu-west-1",
            "ENABLED",
            "demo",
        )

        def check(policy: StorePolicy, meta: RequestMetadata) -> None:
            with contextlib.suppress(PolicyDenied):
                policy.check(KEY, operations.ENCRYPT, meta, "eu-west-1")

        return {
            f"cedar {tag}, cached": lambda: check(cached, one),
            f"cedar {tag}, uncached": lambda: check(uncached, metas[next(cycle) % len(metas)]),
            f"cedar {tag}, text each call": lambda: cedarpy.is_authorized(
                request_dict, compiled.text, "[]"
            ),
        }

    store_policy: StorePolicy | None = None

    variants: dict[str, Callable[[], object]] = {
        "no policy": lambda: (
            None
            if store_policy is None
            else store_policy.check(KEY, operations.ENCRYPT, one, "eu-west-1")
        ),
        "old deny rules (3)": lambda: (old_first_match(RULES, one, "demo"), None)[1],
    }
    variants |= cedar_variants(demo, "6 policies")
    variants |= cedar_variants(big, "13 policies")

    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            samples[name].append(per_call_us(fn, args.seconds))
    base = statistics.median(samples["old deny rules (3)"])
    print(f"bench_policy: {args.rounds} rounds x {args.seconds} s per variant; median µs/decision")
    print(f"{'variant':34} {'µs/decision':>12} {'vs old deny rules':>18}   all rounds")
    for name, runs in samples.items():
        med = statistics.median(runs)
        every = " ".join(f"{r:.2f}" for r in runs)
        print(f"{name:34} {med:12.2f} {med / base:17.2f}x   {every}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
