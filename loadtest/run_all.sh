#!/usr/bin/env bash
# Every transport/speed figure of BENCHMARKS.md ("Transport and speed"), one command after another,
# each bounded; output also kept in loadtest/results/<UTC time>.txt. About 8 minutes on 2 cores.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
py="$here/.venv/bin/python"
mkdir -p loadtest/results
out="loadtest/results/$(date -u +%Y%m%dT%H%M%SZ).txt"
run() { echo "\$ $*"; "$@"; echo "exit status: $?"; echo; }
{
  date -u; nproc; grep -m1 "model name" /proc/cpuinfo; uptime
  run "$py" -m loadtest.profile_app --count 3000
  run "$py" -m loadtest.profile_app --count 3000 --no-observers
  run "$py" -m loadtest.bench_http --duration 5
  run "$py" -m loadtest.latency seq --serve --count 3000 --p50-ms 1 --p99-ms 3
  run "$py" -m loadtest.latency newconn --serve --count 500 --p99-ms 20
  run "$py" -m loadtest.latency mix --serve --rate 1800 --duration 60 --p99-ms 10
  run "$py" -m loadtest.slo --serve --rate 300 --duration 60 --p99-ms 25
  uptime
} 2>&1 | tee "$out"
