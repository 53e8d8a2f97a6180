#!/usr/bin/env bash
# Download the wheels benchmarks/gpu_check.sh needs on a GPU machine that has no package registry.
#
#   bash benchmarks/gpu_wheels.sh                      # for the GPU machine's Python 3.12 (x86_64 manylinux)
#   GPU_PYTHON=3.11 bash benchmarks/gpu_wheels.sh      # for another Python there
#
# Run it here, where pip can download. It fills benchmarks/wheels/ (git-ignored, a few MB): the packages
# of requirements.txt that such a machine lacks (its python3 already has torch, torchvision, numpy,
# scipy, scikit-learn, matplotlib, opencv, onnx, onnxruntime, tqdm, pyyaml, rich, regex, absl-py ...),
# each with --no-deps at the version pinned in requirements.txt or, for their own dependencies, the
# version in the project's environment (.venv), so what runs there is what the tests ran here.
# Carry benchmarks/wheels with the tree; gpu_check.sh installs them with pip --no-index when an import
# is missing.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${GPU_WHEELS:-$REPO/benchmarks/wheels}"
PYVER="${GPU_PYTHON:-3.12}"
# Pinned in requirements.txt, missing on the GPU machine.
PINNED="pycocotools mmengine mmcv-lite mmsegmentation ftfy pytorch-quantization"
# Their dependencies that the GPU machine lacks (versions from the project's environment).
DEPS="addict yapf platformdirs termcolor prettytable wcwidth"

VENV_PY="$REPO/.venv/bin/python"
if [ ! -x "$VENV_PY" ]; then
  echo "gpu_wheels: $VENV_PY not found; run 'source scripts/env.sh' first (the versions come from it)" >&2
  exit 1
fi
pin() {  # NAME -> NAME==VERSION, from requirements.txt else from the project's environment
  local line
  line="$(grep -iE "^$1==" "$REPO/requirements.txt" || true)"
  if [ -n "$line" ]; then echo "${line%%[[:space:]#]*}"; return; fi
  line="$("$VENV_PY" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p')"
  [ -n "$line" ] || { echo "gpu_wheels: $1 is neither pinned in requirements.txt nor installed in .venv" >&2; exit 1; }
  echo "$1==$line"
}
specs=()
for name in $PINNED $DEPS; do specs+=("$(pin "$name")"); done

mkdir -p "$DEST"
echo "gpu_wheels: ${#specs[@]} packages for CPython $PYVER (manylinux x86_64) into $DEST"
"$VENV_PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$DEST" "${specs[@]}"
printf '%s\n' "python $PYVER" "${specs[@]}" >"$DEST/wheels.txt"
ls -1 "$DEST"/*.whl
du -sh "$DEST"
