#!/usr/bin/env bash
# Set up (or reuse) the environment and run the main job on the embedded data:
#   bash scripts/demo.sh          detection: YOLOv6-n style detectors with QARepVGG and RepVGG blocks on the
#                                 synthetic COCO-format shapes, then FP32 vs INT8 COCO mAP side by side
#   bash scripts/demo.sh cls      classification: A0h QARepVGG and RepVGG on scikit-learn's digits,
#                                 train-form vs fused accuracy, then FP32 vs INT8 top-1 side by side
# Models already trained by an earlier run (WORK_DIR/results.json present) are reused, so a second run
# only redoes the quantization report. Outputs land in work_dirs/demo/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
task="${1:-det}"
out=work_dirs/demo

train() {  # train TOOL CONFIG WORK_DIR [--set ...]
  local tool=$1 config=$2 work=$3; shift 3
  if [ -f "$work/results.json" ]; then
    echo "[demo] reusing $work (delete it to retrain)"
  else
    python "tools/$tool" "$config" --work-dir "$work" "$@"
  fi
}

case "$task" in
  det)
    for block in qarepvgg repvgg; do
      train train_det.py "configs/det/synthetic_${block}.toml" "$out/det_${block}"
    done
    python tools/ptq_eval.py --task det --checkpoints "$out/det_qarepvgg/deploy.pt" "$out/det_repvgg/deploy.pt" \
      --calibrator max percentile --calib-batches 4 --batch-size 16 --ort --out "$out/det_ptq"
    ;;
  cls)
    for block in qarepvgg repvgg; do
      # The digits recipe (lr 0.1, wd 1e-4, 8 epochs): RepVGG with its custom L2, QARepVGG with normal L2.
      train train_cls.py "configs/cls/digits_${block}.toml" "$out/cls_${block}"
    done
    python - "$out" <<'PY'
import json, sys
out = sys.argv[1]
print("\n| model | train-form top-1 | fused top-1 | max logit diff |\n|---|---|---|---|")
for block in ("qarepvgg", "repvgg"):
    r = json.load(open(f"{out}/cls_{block}/results.json"))
    print(f"| {block} | {r['train_form']['top1']:.2f} | {r['deploy']['top1']:.2f} | {r['max_logit_diff']:.2g} |")
PY
    python tools/ptq_eval.py --task cls --data data/digits \
      --checkpoints "$out/cls_qarepvgg/deploy.pt" "$out/cls_repvgg/deploy.pt" \
      --calibrator max percentile --calib-batches 8 --batch-size 64 --ort --out "$out/cls_ptq"
    ;;
  *)
    echo "usage: bash scripts/demo.sh [det|cls]" >&2
    exit 2
    ;;
esac
