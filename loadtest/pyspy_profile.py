"""Where a served request's CPU goes: py-spy samples every worker of a real server under load.

Why besides ``loadtest.profile_app`` (cProfile, in-process): cProfile sees only Python calls and
slows them unevenly, and in-process there is no server bridge, no TLS and no thread wake-ups. A
sampling profiler on the served proxy (granian, TLS, the embedded default) shows the real split,
native frames of the HSM module and the interpreter included (``--native``).

It starts the embedded default, replays one pre-signed request with h2load for ``--duration``
seconds, records all worker processes with ``py-spy record --format raw`` (collapsed stacks) and
prints the top functions by own samples and by inclusive samples, as text for BENCHMARKS.md.
py-spy needs ptrace rights (root, or ``kernel.yama.ptrace_scope=0``).

    python -m loadtest.pyspy_profile --op encrypt --duration 10
    python -m loadtest.pyspy_profile --op encrypt --raw /tmp/encrypt.txt   # keep the stacks
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.bench_http import OPS, h2load, make_ciphertext
from loadtest.embedded_server import embedded_server, init_state
from loadtest.xks_requests import decrypt_body, prepare, target_from_env

MAX_DURATION_S = 60


def summarize(raw: str, top: int) -> str:
    """Own and inclusive sample counts per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        if not frames:
            continue
        total += n
        own[_short(frames[-1])] += n
        for name in {_short(f) for f in frames}:
            incl[name] += n
    out = [f"{total} samples"]
    for title, counter in (("own", own), ("inclusive", incl)):
        out.append(f"\nby {title} samples:")
        for name, n in counter.most_common(top):
            out.append(f"  {n / total * 100:5.1f} %  {name}" if total else name)
    return "\n".join(out)


def _short(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)``: lines differ, functions do not."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({os.path.basename(file)})" if file else name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.pyspy_profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--op", choices=OPS, default="encrypt")
    p.add_argument("--duration", type=float, default=10.0, help=f"seconds (<= {MAX_DURATION_S})")
    p.add_argument("--workers", type=int, help="server workers (default: config = cores)")
    p.add_argument("--h2", action="store_true", help="HTTP/2 instead of HTTP/1.1")
    p.add_argument("--clients", type=int, default=32, help="requests in flight")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--native", action="store_true", help="include native (C) frames")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--raw", type=Path, help="also keep the collapsed stacks in this file")
    args = p.parse_args(argv)
    if not 0 < args.duration <= MAX_DURATION_S:
        p.error(f"--duration must be in (0, {MAX_DURATION_S}]")
    for tool in ("py-spy", "h2load"):
        if shutil.which(tool) is None and not (Path(sys.executable).parent / tool).exists():
            p.error(f"{tool} not found (scripts/bootstrap.sh test installs it)")
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        state = work / "state"
        init_state(state)
        with embedded_server(workers=args.workers, state_dir=state) as running:
            os.environ["XKS_STATE_DIR"] = str(running.state_dir)
            target = target_from_env(running.url)
            body = decrypt_body(make_ciphertext(target)) if args.op == "decrypt" else None
            req = prepare(target, args.op, body)
            raw = work / "stacks.txt"
            cmd = [pyspy, "record", "--pid", str(running.pid), "--subprocesses", "--format"]
            cmd += ["raw", "--output", str(raw), "--rate", str(args.rate), "--nonblocking"]
            cmd += ["--duration", str(max(1, round(args.duration)))]
            if args.native:
                cmd.append("--native")
            spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                fig = h2load(
                    target,
                    req,
                    h1=not args.h2,
                    duration=args.duration,
                    clients=args.clients,
                    streams=4,
                    workdir=work,
                    server_pid=running.pid,
                )
                _, err = spy.communicate(timeout=args.duration + 60)
            finally:
                if spy.poll() is None:
                    spy.kill()
        if not raw.exists():
            raise SystemExit(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
        text = raw.read_text()
        if args.raw:
            args.raw.write_text(text)
    print(
        f"{args.op} over {'HTTP/2' if args.h2 else 'HTTP/1.1'} TLS, {args.clients} in flight, "
        f"{args.duration:g} s: {fig.rps:,.0f} req/s, server CPU {fig.cpu_us:,.0f} µs/req, "
        f"non-2xx {fig.non_2xx}, errors {fig.errors}"
    )
    print(summarize(text, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
