#!/usr/bin/env bash
# The GPU check: every CUDA path of the project, on the embedded data, in one run of under 8 minutes on
# one GPU (sized for an H200), with a summary table at the end.
#
#   bash benchmarks/gpu_check.sh                 # on a machine with a CUDA GPU
#   bash benchmarks/gpu_check.sh --keep-going    # run every step even after a failure (one lease, all findings)
#   bash benchmarks/gpu_check.sh --dry-run       # tiny sizes on the CPU (a few minutes): checks the script itself
#   bash benchmarks/gpu_check.sh --only cls_amp,ptq_cls   # a subset of the steps
#
# Steps (the names in the table):
#   det_amp      YOLOv6-s, 640 px, batch 32, 300 training steps with AMP (benchmarks/bench_det_gpu.py):
#                images/s, peak memory, the loss falling
#   seg_amp      DeepLabV3+ on QARepVGG-B1g4 through tools/train_seg.py --amp, 300 iterations on the synthetic
#                street scenes (128x256, batch 16): images/s and memory from mmengine's log, the loss falling
#   cls_amp      QARepVGG-A0 training steps at batch 256, 224 px, AMP (benchmarks/bench_cls_gpu.py)
#   ddp_cls/det/seg  torchrun --nproc_per_node 1 of tools/train_cls.py, train_det.py, train_seg.py --launcher
#                pytorch (short runs); each must show it joined a process group (NCCL)
#   ptq_cls/det/seg  tools/ptq_eval.py --device cuda on the DDP runs' checkpoints: calibration and
#                fake-quant evaluation on CUDA
#   cls_compile  cls_amp under torch.compile; a compile failure is reported in the table, it fails nothing
#
# GPU_CHECK_BUDGET (seconds, default 450 on the GPU) bounds the whole run: step time limits are cut to what is
# left, and a step that no longer fits is reported as not run (and fails the run: the results are incomplete).
#
# Results: gpu_check.json, gpu_check.md (the table) and gpu_check.log (every step's log) in $OUT when
# that variable is set, else in the run folder work_dirs/gpu_check/<time>/ (checkpoints and data stay there).
# Any failure is reported with the end of its log; the script stops at the first one (unless --keep-going)
# and exits 1.
#
# Python packages: the GPU machine's python3 has torch, torchvision, onnxruntime and opencv but no registry.
# The other packages travel as wheels: run `bash benchmarks/gpu_wheels.sh` where pip can download, carry
# benchmarks/wheels/ (git-ignored) with the tree, and this script installs them (pip --no-index) into
# work_dirs/gpu_check/site when an import is missing. PYTHON=... picks the interpreter (default python3);
# GPU_CHECK_BASE moves work_dirs/gpu_check (run folders and site/). The project's mmcv-lite shim
# (shims/mmcv-lite-ops) is put on PYTHONPATH: pip's .pth that registers it elsewhere is not read from there.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PYTHON:-python3}"
WHEELS="${GPU_WHEELS:-$REPO/benchmarks/wheels}"
BASE="${GPU_CHECK_BASE:-$REPO/work_dirs/gpu_check}"  # run folders and the installed wheels (site/)
MODE=gpu
KEEP_GOING=0
ONLY=""
ALL_STEPS="det_amp seg_amp cls_amp ddp_cls ddp_det ddp_seg ptq_cls ptq_det ptq_seg cls_compile"
SOFT_STEPS=" cls_compile "  # reported, never fail the run
# Wall-clock budget of the whole run in seconds (the environment check included): each step's time limit is
# cut to what is left, and steps that no longer fit are reported as not run. 450 s leaves room for the summary
# inside 8 minutes on the GPU.
BUDGET="${GPU_CHECK_BUDGET:-}"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) MODE=dry-run ;;
    --keep-going) KEEP_GOING=1 ;;
    --only) ONLY=" ${2//,/ } "; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$BUDGET" ] || { [ "$MODE" = gpu ] && BUDGET=450 || BUDGET=1500; }
for s in $ONLY; do
  case " $ALL_STEPS " in *" $s "*) ;; *) echo "gpu_check: unknown step $s; steps: $ALL_STEPS" >&2; exit 2 ;; esac
done

RUN="$BASE/$(date +%Y%m%d_%H%M%S)_$$"
RESULTS="${OUT:-$RUN}"
mkdir -p "$RUN/logs" "$RESULTS"
: >"$RUN/steps.tsv"
FAILED=0
FINISHED=0
collect_logs() {
  for f in "$RUN"/logs/*.log; do
    [ -e "$f" ] && { echo "===== $(basename "$f" .log)"; cat "$f"; }
  done >"$RESULTS/gpu_check.log"
}
# Stopped before the summary (the environment check failed, the summary itself failed, or a signal): still leave
# the table of the steps that ran and their logs in the results folder, and say so.
on_exit() {
  local code=$?
  [ "$FINISHED" -eq 0 ] || return 0
  echo "[gpu_check] stopped before the summary (exit $code); partial results in $RESULTS" >&2
  [ -s "$RUN/steps.tsv" ] && "$PY" benchmarks/_gpu_check.py summarize "$RUN" "$RESULTS" "$MODE" >&2 || true
  collect_logs || true
  return 0
}
trap on_exit EXIT
trap 'exit 143' TERM INT
say() { echo "[gpu_check] $*"; }

# --- Python packages ------------------------------------------------------------------------------------
NEEDED="torch torchvision onnxruntime onnx cv2 numpy scipy sklearn matplotlib tqdm pycocotools mmengine mmcv \
mmseg ftfy prettytable pytorch_quantization qarep_mmcv_lite_ops"
# The module imports, the CUDA device (on the GPU) and environment.json, in one Python (benchmarks/_gpu_check.py):
# its last line of stdout lists the modules that cannot be imported; exit 3: no CUDA device.
check_environment() {
  "$PY" benchmarks/_gpu_check.py environment "$RUN/environment.json" "$MODE" $NEEDED | tail -n 1
}
# The repo, and the project's mmcv-lite shim (its .pth, which registers it where pip installs it, would not be
# processed from a PYTHONPATH folder: qarep_dense.integrations.mmseg imports it and registers it itself).
SRC_PATH="$REPO:$REPO/shims/mmcv-lite-ops"
export PYTHONPATH="$SRC_PATH${PYTHONPATH:+:$PYTHONPATH}"
env_code=0
missing="$(check_environment)" || env_code=$?
if [ -n "$missing" ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
  say "installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $BASE/site (missing: ${missing%%;*} ...)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$BASE/site" \
    "$WHEELS"/*.whl 2>&1 | tee -a "$RUN/logs/environment.log"
  export PYTHONPATH="$SRC_PATH:$BASE/site${PYTHONPATH#"$SRC_PATH"}"
  env_code=0
  missing="$(check_environment)" || env_code=$?
elif [ -n "$missing" ] && [ -d "$BASE/site" ]; then
  export PYTHONPATH="$SRC_PATH:$BASE/site${PYTHONPATH#"$SRC_PATH"}"  # installed by an earlier run
  env_code=0
  missing="$(check_environment)" || env_code=$?
fi
# The environment's problems go to stderr and to logs/environment.log (so into gpu_check.log too).
die() { echo "gpu_check: $*" | tee -a "$RUN/logs/environment.log" >&2; exit 1; }
if [ -n "$missing" ]; then
  die "$PY cannot import: $missing; run 'bash benchmarks/gpu_wheels.sh' on a machine with registry access and" \
    "carry $WHEELS with the tree (wheels for Python $("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])'))"
fi
if [ "$env_code" -eq 3 ]; then
  die "no CUDA device visible to $PY (torch.cuda.is_available() is False); use --dry-run on a CPU"
elif [ "$env_code" -ne 0 ]; then
  die "the environment check ($PY benchmarks/_gpu_check.py environment) failed with exit $env_code"
fi

# --- steps ---------------------------------------------------------------------------------------------
finish() {
  FINISHED=1
  "$PY" benchmarks/_gpu_check.py summarize "$RUN" "$RESULTS" "$MODE"
  collect_logs
  say "results: $RESULTS/gpu_check.json, gpu_check.md, gpu_check.log; run folder $RUN"
  if [ "$FAILED" -gt 0 ]; then
    say "FAILED: $FAILED step(s); see the log excerpts above"
    exit 1
  fi
}

# step NAME TIMEOUT_S FUNCTION: run it with its output in logs/NAME.log, record status and time.
step() {
  local name=$1 limit=$2 fn=$3 code=0 t0=$SECONDS note=""
  if [ -n "$ONLY" ] && [[ "$ONLY" != *" $name "* ]]; then return 0; fi
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt 30 ]; then  # not started: the run's time is spent (a failure, unless the step is soft)
    local status=FAILED
    if [[ "$SOFT_STEPS" == *" $name "* ]]; then status=skipped; else FAILED=$((FAILED + 1)); fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" 0 0 "not run: the ${BUDGET} s budget was spent" \
      >>"$RUN/steps.tsv"
    say "$name: not run, the ${BUDGET} s budget (GPU_CHECK_BUDGET) was spent" >&2
    return 0
  fi
  [ "$limit" -le "$left" ] || limit=$left
  say "$name ..."
  timeout --kill-after=20 "$limit" bash -c "set -euo pipefail; $(declare -f); $(declare -p PY RUN MODE SEG_CONFIG); $fn" \
    >"$RUN/logs/$name.log" 2>&1 || code=$?
  local status=ok
  if [ "$code" -eq 77 ]; then
    status=skipped; note="$(tail -n 1 "$RUN/logs/$name.log")"
  elif [ "$code" -ne 0 ]; then
    [ "$code" -eq 124 ] && note="timed out after ${limit} s"
    if [[ "$SOFT_STEPS" == *" $name "* ]]; then
      status=failed-soft; note="${note:-exit $code} (reported only)"
    else
      status=FAILED; FAILED=$((FAILED + 1))
    fi
    echo "[gpu_check] $name $status (exit $code${note:+, $note}); last lines of $RUN/logs/$name.log:" >&2
    tail -n 40 "$RUN/logs/$name.log" | sed 's/^/    /' >&2
  fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$code" "$((SECONDS - t0))" "$note" >>"$RUN/steps.tsv"
  say "$name: $status in $((SECONDS - t0)) s"
  if [ "$status" = FAILED ] && [ "$KEEP_GOING" -eq 0 ]; then
    finish
  fi
}

# Each step is a function run in its own strict bash (see step), in the repo root; PY, RUN, MODE, SEG_CONFIG passed in.
det_amp() {
  if [ "$MODE" = gpu ]; then set -- --device cuda --scale s --size 640 --batch 32 --steps 300 --warmup 20 --workers 12
  else set -- --device cpu --scale test --size 64 --batch 2 --steps 4 --warmup 1 --workers 0; fi
  "$PY" benchmarks/bench_det_gpu.py "$@" --data "$RUN/data/coco_bench" --json "$RUN/det_amp.json"
}

SEG_CONFIG=configs/seg/deeplabv3plus_qarepvgg-test_1xb8-600it_synthetic-cityscapes-128x256.py
seg_amp() {
  local batch=2 opts=(train_cfg.max_iters=3 train_dataloader.batch_size=2 default_hooks.logger.interval=1) amp=()
  if [ "$MODE" = gpu ]; then  # the paper's trunk and mmseg's head widths on the synthetic scenes
    batch=16 amp=(--amp)
    opts=(model.backbone.arch=B1g4 model.decode_head.in_channels=2048 model.decode_head.channels=512
          model.decode_head.c1_in_channels=128 model.decode_head.c1_channels=48 model.auxiliary_head.in_channels=512
          model.auxiliary_head.channels=256 train_cfg.max_iters=300 train_dataloader.batch_size=16
          train_dataloader.num_workers=8 default_hooks.logger.interval=10 env_cfg.cudnn_benchmark=True)
  fi
  echo "{\"batch\": $batch}" >"$RUN/seg_amp.meta.json"
  "$PY" tools/train_seg.py "$SEG_CONFIG" "${amp[@]}" --work-dir "$RUN/seg_amp" --no-progress --cfg-options "${opts[@]}"
}

cls_args() {
  if [ "$MODE" = gpu ]; then echo "--device cuda --arch A0 --size 224 --batch 256 --steps 30 --warmup 5"
  else echo "--device cpu --arch test --size 32 --batch 8 --steps 3 --warmup 1 --compile-backend eager"; fi
}
cls_amp() { "$PY" benchmarks/bench_cls_gpu.py $(cls_args) --no-compile --json "$RUN/cls_amp.json"; }
cls_compile() {
  "$PY" benchmarks/bench_cls_gpu.py $(cls_args) --no-eager --json "$RUN/cls_compile.json"
  "$PY" -c 'import json, sys; c = json.load(open(sys.argv[1]))["compile"]; sys.exit(1 if "error" in c else 0)' \
    "$RUN/cls_compile.json"
}

torchrun1() { "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 "$@"; }
ddp_cls() {
  if [ "$MODE" = gpu ]; then set -- configs/cls/digits_qarepvgg.toml --device cuda --set optim.epochs=2
  else set -- configs/cls/synthetic_test.toml --device cpu --set optim.epochs=1; fi
  torchrun1 tools/train_cls.py "$@" --work-dir "$RUN/ddp_cls" 2>&1 | tee "$RUN/ddp_cls.out"
  "$PY" benchmarks/_gpu_check.py ddp-evidence cls "$RUN/ddp_cls" "$RUN/ddp_cls.out"
}
ddp_det() {
  if [ "$MODE" = gpu ]; then
    set -- configs/det/synthetic_qarepvgg.toml --device cuda --set optim.epochs=2 train.eval_interval=2 data.workers=8
  else set -- configs/det/synthetic_test.toml --device cpu; fi
  torchrun1 tools/train_det.py "$@" --work-dir "$RUN/ddp_det" 2>&1 | tee "$RUN/ddp_det.out"
  "$PY" benchmarks/_gpu_check.py ddp-evidence det "$RUN/ddp_det" "$RUN/ddp_det.out"
}
ddp_seg() {
  if [ "$MODE" != gpu ]; then
    echo "skipped on the CPU: mmengine's pytorch launcher calls torch.cuda.set_device"; exit 77
  fi
  torchrun1 tools/train_seg.py "$SEG_CONFIG" --launcher pytorch --work-dir "$RUN/ddp_seg" --no-progress --cfg-options train_cfg.max_iters=40 \
    default_hooks.logger.interval=10 env_cfg.dist_cfg.backend=nccl 2>&1 | tee "$RUN/ddp_seg.out"
  "$PY" benchmarks/_gpu_check.py ddp-evidence seg "$RUN/ddp_seg" "$RUN/ddp_seg.out"
}

ptq() {  # TASK CHECKPOINT [more ptq_eval arguments]
  local task=$1 ckpt=$2; shift 2
  if [ ! -f "$ckpt" ]; then echo "skipped: $ckpt was not written (its training step did not run)"; exit 77; fi
  if [ "$MODE" = gpu ]; then set -- "$@" --device cuda --calib-batches 4 --batch-size 32
  else set -- "$@" --device cpu --calib-batches 1 --batch-size 16; fi
  "$PY" tools/ptq_eval.py --task "$task" --checkpoints "$ckpt" --out "$RUN/ptq_$task" --no-progress "$@"
}
ptq_cls() {
  if [ "$MODE" = gpu ]; then set -- --data data/digits; else set -- --data data/synthetic_cls; fi
  ptq cls "$RUN/ddp_cls/deploy.pt" "$@"
}
ptq_det() { ptq det "$RUN/ddp_det/deploy.pt"; }
ptq_seg() {  # on the CPU the seg DDP run is skipped: quantize seg_amp's model instead
  local ckpt="$RUN/ddp_seg/deploy.pt"
  [ -f "$ckpt" ] || ckpt="$RUN/seg_amp/deploy.pt"
  ptq seg "$ckpt"
}

say "mode $MODE, run folder $RUN, results in $RESULTS"
# Most important first; torch.compile (slowest, reported only) last. Limits: seconds per step, cut to
# what is left of the run's budget.
step det_amp 180 det_amp
step seg_amp 240 seg_amp
step cls_amp 120 cls_amp
step ddp_cls 120 ddp_cls
step ddp_det 150 ddp_det
step ddp_seg 150 ddp_seg
step ptq_cls 90 ptq_cls
step ptq_det 90 ptq_det
step ptq_seg 90 ptq_seg
step cls_compile 240 cls_compile
finish
