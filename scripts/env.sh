#!/usr/bin/env bash
# Create or reuse the project's virtual environment.
#
# The environment is ~6 GB, so it lives in a cache outside the clone, keyed by a hash of
# requirements.txt and the Python that builds it (version and machine); `.venv` at the repo root is
# a link to it. A fresh clone on the same machine reuses the cache in a second; a new machine builds
# it once (~5 min).
# Another `python3` on PATH (pyenv vs system) does not build a second environment: when none exists
# for that Python but a complete one exists for the same requirements.txt, that one is used and one
# line says so. Set QAREP_PYTHON (e.g. QAREP_PYTHON=python3) to build one for a given Python.
# Before any build, one line says which Python, where, and what it costs.
# Source this file: it activates the environment and puts the repo on PYTHONPATH. It leaves the
# caller's shell options alone (the build itself runs in a strict subshell).
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_python="${QAREP_PYTHON:-python3}"
_cache="${QAREP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qarep-dense}"

_qarep_env_fail() { echo "[env] $1" >&2; return 1; }
# The cache key of an environment built by interpreter $1 from this checkout's requirements.txt.
_qarep_env_key() {
  { cat "$_repo/requirements.txt"; "$1" -c 'import sys, platform; print(sys.version, platform.machine())'; } \
    | sha256sum | cut -c1-16
}
# True when $1 is a complete environment built from this requirements.txt (by its own interpreter).
_qarep_env_fits() {
  [ -f "$1/.complete" ] && [ -x "$1/bin/python" ] && [ -f "$1/bin/activate" ] \
    && [ "$(basename "$1")" = "venv-$(_qarep_env_key "$1/bin/python" 2>/dev/null)" ]
}
_qarep_env_python() { "$1" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || echo "?"; }

if ! command -v "$_python" >/dev/null 2>&1; then
  _qarep_env_fail "$_python: no such Python on PATH (set QAREP_PYTHON to the interpreter to build with)" \
    || return 1 2>/dev/null || exit 1
fi
_key="$(_qarep_env_key "$_python")"
_venv="$_cache/venv-$_key"
if [ ! -f "$_venv/.complete" ] && [ -z "${QAREP_PYTHON:-}" ]; then
  # Same requirements, other Python (the one .venv points to first): reuse it instead of 6 GB more.
  for _other in "$(readlink "$_repo/.venv" 2>/dev/null)" "$_cache"/venv-*; do
    if [ -n "$_other" ] && _qarep_env_fits "$_other"; then
      echo "[env] using $_other (Python $(_qarep_env_python "$_other/bin/python"), same requirements.txt); your" \
        "$_python is Python $(_qarep_env_python "$_python"): set QAREP_PYTHON=$_python to build an environment" \
        "for it instead (~6 GB, ~5 min)" >&2
      _venv="$_other"
      break
    fi
  done
  unset _other
fi

if [ ! -f "$_venv/.complete" ]; then
  echo "[env] building a new environment with Python $(_qarep_env_python "$_python")" \
    "($(command -v "$_python" || echo "$_python")) in $_venv: ~6 GB of disk, about 5 minutes (once per" \
    "machine, Python and requirements.txt)" >&2
  # venvs hard-code their path, so build in place under the final name and mark completion
  # last; the lock keeps two concurrent first runs from building over each other. Every step is
  # chained with && and `|| exit 1`: `set -e` does nothing in a subshell on the left of `||`, and
  # a failed pip install must never be marked complete.
  (
    mkdir -p "$_cache" && exec 9>"$_cache/.lock-$_key" && flock 9 || exit 1
    if [ ! -f "$_venv/.complete" ]; then
      # pip runs from the repo root: requirements.txt names the local shim by a path relative to it
      rm -rf "$_venv" \
        && "$_python" -m venv "$_venv" \
        && "$_venv/bin/pip" install --quiet --upgrade pip >&2 \
        && cd "$_repo" \
        && "$_venv/bin/pip" install --quiet -r requirements.txt >&2 \
        && touch "$_venv/.complete" || exit 1
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
