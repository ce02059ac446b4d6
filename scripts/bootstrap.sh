#!/usr/bin/env bash
# Make this checkout runnable: system packages (as root, via apt) and a project virtualenv in .venv.
#
#   scripts/bootstrap.sh [serve|test]      (default: serve; run by scripts/serve and scripts/test)
#
# serve: what running the proxy needs (softhsm2, openssl; the project without extras).
# test:  also what the suite and the load tools need (curl, gcc, wrk, h2load; extras test,load).
# Idempotent and quiet when nothing is missing. The stamp in .venv records which extras were
# installed, so `serve` then `test` installs the extras, and `test` then `serve` installs nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
profile="${1:-serve}"
case "$profile" in
  serve) extras="" ;;
  test) extras="test,load" ;;
  *) echo "usage: scripts/bootstrap.sh [serve|test]" >&2; exit 2 ;;
esac

# run_logged WHAT CMD...: run CMD with its output in a temporary log; on failure show the log's tail.
run_logged() {
  local what="$1" log; shift
  log="$(mktemp "${TMPDIR:-/tmp}/xksproxy-bootstrap.XXXXXX")"
  if "$@" >"$log" 2>&1; then rm -f "$log"; return 0; fi
  echo "bootstrap: $what failed; last lines of $log:" >&2
  tail -n 25 "$log" >&2
  exit 1
}

if ! command -v "$PYTHON" >/dev/null 2>&1 \
    || ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "bootstrap: need Python >= 3.11 as '$PYTHON' (Debian 12: apt-get install python3), or set PYTHON=" >&2
  exit 1
fi

need_pkgs=()
if [ ! -e /usr/lib/softhsm/libsofthsm2.so ] || ! command -v softhsm2-util >/dev/null 2>&1; then
  need_pkgs+=(softhsm2)
fi
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
"$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
if [ "$profile" = "test" ]; then
  command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
  command -v cc >/dev/null 2>&1 || need_pkgs+=(gcc libc6-dev)
  command -v wrk >/dev/null 2>&1 || need_pkgs+=(wrk)
  command -v h2load >/dev/null 2>&1 || need_pkgs+=(nghttp2-client)
  # tests/deploy: `haproxy -c` and a live HAProxy in front of a proxy; `systemd-analyze verify`
  # and `security --offline=yes` score the units (no running systemd needed).
  command -v haproxy >/dev/null 2>&1 || need_pkgs+=(haproxy)
  command -v systemd-analyze >/dev/null 2>&1 || need_pkgs+=(systemd)
  # tests/hsm, tests/conformance: openCryptoki's soft token as a second PKCS#11 implementation
  # (library, pkcsslotd, pkcsconf; tests/support/ock_token.py sets the token up and back).
  [ -x /usr/sbin/pkcsslotd ] || need_pkgs+=(opencryptoki)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ]; then
    echo "bootstrap: installing system packages: ${need_pkgs[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    run_logged "apt-get update" apt-get update -q
    run_logged "apt-get install" apt-get install -y -q --no-install-recommends "${need_pkgs[@]}"
  else
    echo "bootstrap: missing system packages: ${need_pkgs[*]}" >&2
    echo "bootstrap: install them as root (then rerun this as $(id -un)):" >&2
    echo "  apt-get install -y --no-install-recommends ${need_pkgs[*]}" >&2
    exit 1
  fi
fi

venv="$here/.venv"
stamp="$venv/.xksproxy-installed"   # one line: "extras=<comma-separated extras installed>"
if [ ! -x "$venv/bin/python" ] || [ ! -x "$venv/bin/pip" ]; then
  run_logged "creating $venv" "$PYTHON" -m venv --clear "$venv"
fi

# up_to_date: the stamp is newer than the dependency files and lists every extra asked for.
up_to_date() {
  [ -f "$stamp" ] || return 1
  [ "$here/pyproject.toml" -nt "$stamp" ] && return 1
  [ "$here/constraints.txt" -nt "$stamp" ] && return 1
  local have extra
  have="$(sed -n 's/^extras=//p' "$stamp")"
  for extra in ${extras//,/ }; do
    case ",$have," in *",$extra,"*) ;; *) return 1 ;; esac
  done
}

if ! up_to_date; then
  # Keep extras installed by an earlier, wider bootstrap: `serve` after `test` must not break tests.
  have="$( [ -f "$stamp" ] && sed -n 's/^extras=//p' "$stamp" || true)"
  want="$(printf '%s\n' ${extras//,/ } ${have//,/ } | sort -u | paste -sd, -)"
  target="$here"
  [ -n "$want" ] && target="$here[$want]"
  echo "bootstrap: installing Python dependencies into .venv (${want:-no extras}; up to a minute)" >&2
  run_logged "upgrading pip" "$venv/bin/python" -m pip install --disable-pip-version-check --upgrade pip
  run_logged "pip install" "$venv/bin/python" -m pip install --disable-pip-version-check \
      -c "$here/constraints.txt" -e "$target"
  echo "extras=$want" >"$stamp"
  echo "bootstrap: .venv ready" >&2
fi
