#!/usr/bin/env bash
# Set up (or reuse) the environment and run the test suite, one pytest-xdist worker per core (each on one
# thread; tests of one file stay on one worker, sharing its module fixtures). Extra arguments replace the
# defaults and go to pytest, e.g. `bash scripts/test.sh -m slow -n auto` for the long end-to-end checks, or
# `bash scripts/test.sh tests/test_zoo.py` for one file in one process.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
if [ "$#" -eq 0 ]; then
  set -- -m "not slow" -n auto --dist loadfile
fi
exec python -m pytest -q "$@"
