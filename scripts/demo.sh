#!/usr/bin/env bash
# Set up (or reuse) the environment and run the main job on the embedded data (tools/demo.py):
#   bash scripts/demo.sh                      classification, detection and segmentation; RepVGG vs QARepVGG
#                                             in FP32 and INT8 over seeds, the mechanism, the repair, latency and
#                                             pictures; results and summary.md in work_dirs/demo/ (38-50 min on
#                                             2 cores of the slowest machine measured: two one-thread stages at a time)
#   bash scripts/demo.sh --cls-models repvgg_custom,qarepvgg,repopt   RepOpt-VGG's classification rows too
#   bash scripts/demo.sh --quick              one seed's story, classification and detection (10-15 minutes)
#   bash scripts/demo.sh --tasks cls          any subset of cls,det,seg
# A rerun reuses every finished stage (work_dirs/demo/.stages/) and redoes only what is missing.
# Other options: python tools/demo.py --help
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
exec python tools/demo.py "$@"
