#!/usr/bin/env bash
# Set up (or reuse) the environment and run the test suite. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the long end-to-end checks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
if [ "$#" -eq 0 ]; then
  set -- -m "not slow"
fi
exec python -m pytest -q "$@"
