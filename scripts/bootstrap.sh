#!/usr/bin/env bash
# Make this checkout runnable: system packages (as root, via apt) and a project virtualenv in .venv.
# Idempotent and quiet when nothing is missing; sourced by scripts/serve and scripts/test.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

need_pkgs=()
[ -e /usr/lib/softhsm/libsofthsm2.so ] || need_pkgs+=(softhsm2)
command -v softhsm2-util >/dev/null 2>&1 || need_pkgs+=(softhsm2)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
command -v cc >/dev/null 2>&1 || need_pkgs+=(gcc libc6-dev)
"$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
if [ "${XKSPROXY_BOOTSTRAP_EXTRA:-}" = "load" ]; then
  command -v wrk >/dev/null 2>&1 || need_pkgs+=(wrk)
  command -v h2load >/dev/null 2>&1 || need_pkgs+=(nghttp2-client)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ]; then
    echo "bootstrap: installing system packages: ${need_pkgs[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >/dev/null
  else
    echo "bootstrap: missing system packages: ${need_pkgs[*]}" >&2
    echo "bootstrap: run as root, or: sudo apt-get install -y ${need_pkgs[*]}" >&2
    exit 1
  fi
fi

venv="$here/.venv"
stamp="$venv/.xksproxy-installed"
if [ ! -x "$venv/bin/python" ]; then
  "$PYTHON" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ] || [ "$here/constraints.txt" -nt "$stamp" ]; then
  echo "bootstrap: installing Python dependencies into .venv" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
      -c "$here/constraints.txt" -e "$here[test,load]"
  touch "$stamp"
fi
