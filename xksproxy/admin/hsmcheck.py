"""``python -m xksproxy.admin.hsmcheck CONFIG``: open every [[hsm]] once, the way a worker will.

Why a separate process: PKCS#11 must never be initialised in the ``serve`` launcher, which forks
workers afterwards (a module initialised before ``fork`` is unusable in the children). ``serve``
runs this module first so that a wrong PIN or token label becomes one line naming the [[hsm]]
and the cause instead of a crash loop of workers.

Output contract (read by :func:`xksproxy.admin.cli`): exit 0 when every backend can serve (a
backend of several members needs one member that starts: the others are taken out and come back
when their probe passes, see hsm/backend.py); else exit 1 with a line ``[[hsm]] NAME:
ErrorType: message`` (at most 400 characters) on stderr, for the first member of the first
backend none of whose members started.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

PROBLEM_PREFIX = "[[hsm]]"
"""Every problem line starts with this, so the caller can tell it from other stderr output."""

_MAX_LINE = 400


async def check(config_path: Path) -> str | None:
    """Start and close a pool for every [[hsm]] of the config; the first problem, or None."""
    from hsm import HsmPool
    from xksproxy.config import load_config

    config = load_config(config_path)
    for backend in config.backends or {h.name: [h.name] for h in config.hsms}:
        first_problem: str | None = None
        for h in config.members(backend):
            pool = HsmPool(h)
            try:
                await pool.start()
            except Exception as exc:  # any start-up failure is reported the same way: one line
                first_problem = (
                    first_problem
                    or (f"{PROBLEM_PREFIX} {h.name}: {type(exc).__name__}: {exc}"[:_MAX_LINE])
                )
                continue
            await pool.close()
            first_problem = None
            break
        if first_problem is not None:
            return first_problem
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m xksproxy.admin.hsmcheck CONFIG", file=sys.stderr)
        return 2
    problem = asyncio.run(check(Path(args[0])))
    if problem is None:
        return 0
    print(problem, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
