#!/usr/bin/env bash
# Create or reuse the project's virtual environment.
#
# The environment is ~6 GB, so it lives in a cache outside the clone, keyed by a hash of
# requirements.txt and the Python version; `.venv` at the repo root is a link to it. A fresh
# clone on the same machine reuses the cache in a second; a new machine builds it once (~3 min).
# Source this file: it activates the environment and puts the repo on PYTHONPATH. It leaves the
# caller's shell options alone (the build itself runs in a strict subshell).
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_python="${QAREP_PYTHON:-python3}"
_key="$( { cat "$_repo/requirements.txt"; "$_python" -c 'import sys, platform; print(sys.version, platform.machine())'; } | sha256sum | cut -c1-16)"
_cache="${QAREP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qarep-dense}"
_venv="$_cache/venv-$_key"

_qarep_env_fail() { echo "[env] $1" >&2; return 1; }

if [ ! -f "$_venv/.complete" ]; then
  echo "[env] building $_venv (first run on this machine, a few minutes)" >&2
  # venvs hard-code their path, so build in place under the final name and mark completion
  # last; the lock keeps two concurrent first runs from building over each other.
  (
    set -euo pipefail
    mkdir -p "$_cache"
    exec 9>"$_cache/.lock-$_key"
    flock 9
    if [ ! -f "$_venv/.complete" ]; then
      rm -rf "$_venv"
      "$_python" -m venv "$_venv"
      "$_venv/bin/pip" install --quiet --upgrade pip >&2
      cd "$_repo"  # requirements.txt names the local shim by a path relative to the repo root
      "$_venv/bin/pip" install --quiet -r requirements.txt >&2
      touch "$_venv/.complete"
    fi
  ) || _qarep_env_fail "building $_venv failed (see pip's messages above)" || return 1 2>/dev/null || exit 1
fi
if [ "$(readlink "$_repo/.venv" 2>/dev/null)" != "$_venv" ]; then
  if [ -e "$_repo/.venv" ] && [ ! -L "$_repo/.venv" ]; then
    _qarep_env_fail "$_repo/.venv is a real folder, not the link this script manages; move it away and rerun" \
      || return 1 2>/dev/null || exit 1
  fi
  ln -sfn "$_venv" "$_repo/.venv"
fi
# shellcheck disable=SC1091
source "$_repo/.venv/bin/activate"
export PYTHONPATH="$_repo${PYTHONPATH:+:$PYTHONPATH}"
# Two cores here: keep torch from oversubscribing when DataLoader workers also run.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
