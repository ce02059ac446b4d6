#!/usr/bin/env bash
# The hot-path figures of BENCHMARKS.md (issue 16), one command after another, each bounded; the
# output is also kept in loadtest/results/<UTC time>.txt (git-ignored).
#
#   loadtest/run_all.sh            3 runs of every target (about 15 minutes on 2 cores)
#   RUNS=1 loadtest/run_all.sh     one run (a quick look; a target is only met over 3 runs)
#
# loadtest.targets prints each target's value in every run, the median and whether it is met
# (exit status 1 if any is missed); the in-process profile and the connection/SLO figures
# around it are context, measured once. Run it on a quiet machine: the load generator shares
# the cores with the server, and every ratio is against /ping measured in the same run.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
py="$here/.venv/bin/python"
runs="${RUNS:-3}"
mkdir -p loadtest/results
out="loadtest/results/$(date -u +%Y%m%dT%H%M%SZ).txt"
status=0
run() { echo "\$ $*"; "$@"; local rc=$?; echo "exit status: $rc"; echo; return "$rc"; }
{
  date -u; git describe --always --dirty; nproc; grep -m1 "model name" /proc/cpuinfo; uptime
  run "$py" -m loadtest.profile_app --count 3000
  run "$py" -m loadtest.profile_app --count 3000 --no-observers
  run "$py" -m loadtest.targets --runs "$runs" || status=1
  run "$py" -m loadtest.latency newconn --serve --count 500 --p99-ms 20
  run "$py" -m loadtest.slo --serve --rate 300 --duration 60 --p99-ms 25
  uptime
  echo "run_all: targets $([ "$status" = 0 ] && echo met || echo MISSED); output in $out"
  exit "$status"   # the group is a subshell (a pipeline member): this is its status
} 2>&1 | tee "$out"
exit "${PIPESTATUS[0]}"
