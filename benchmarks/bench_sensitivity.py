"""Per-layer quantization sensitivity: our output-error ranking vs YOLOv6's one-mAP-pass-per-layer ranking.

    nice -n 10 python benchmarks/bench_sensitivity.py --work-dir work_dirs/bench_sensitivity \
        --out benchmarks/results/sensitivity.md

On the synthetic detector (trained here first if ``WORK_DIR/det/best.pt`` is missing: the "test"
scale, RepVGG blocks, 200 train / 50 val images at 128 px, ``--epochs`` 25; about 22 minutes on 2
shared cores, the benchmark itself about 15 more). Our ranking's cost does not depend on the size of the
validation set; YOLOv6's grows linearly with it (50 images here, 5000 on COCO val2017).
Both rankings quantize one unit at a time in the same calibrated model (max calibration):

- ours (``qarep_dense.quant.sensitivity``): relative output MSE on ``--num-batches`` calibration batches;
- YOLOv6's way (its partial-quantization tooling): one full COCO validation pass per unit, ranked by AP drop.

Printed in one run: wall time of each and their ratio, the overlap of the two top-5 sets, Spearman's
rank correlation over all units, and the INT8 AP when the top ``--keep`` units of each ranking stay float.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from qarep_dense.config import load_config
from qarep_dense.quant import quantize_partial, rank_layers
from qarep_dense.quant.calibration import collect_batches
from qarep_dense.tasks.detection import DetConfig, train
from qarep_dense.tasks.quant_check import CheckOptions, QuantConfig, quantize_and_check
from qarep_dense.tasks.registry import get_task, load_fused
from qarep_dense.tasks.splits import request_for
from _timing import publish_report  # benchmarks/ is the script's folder, first on sys.path  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "det" / "synthetic_repvgg.toml"
RECIPE = ["model.scale=test", "data.workers=0",
          "data.synthetic_train=200", "data.synthetic_val=50", "data.image_size=128", "optim.warmup_min_iters=20",
          "train.mosaic_off_epochs=3", "train.progress=false"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", type=Path, default=Path("work_dirs/bench_sensitivity"))
    p.add_argument("--checkpoint", type=Path, default=None, help="a detector checkpoint (default: train one)")
    p.add_argument("--epochs", type=int, default=25, help="training epochs when the detector is trained here")
    p.add_argument("--calib-batches", type=int, default=4)
    p.add_argument("--num-batches", type=int, default=2, help="calibration batches for the output-error ranking")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--keep", type=int, default=5, help="top units compared and kept float")
    p.add_argument("--out", type=Path, default=None, help="append the Markdown table to this file")
    return p.parse_args()


def checkpoint(args: argparse.Namespace) -> Path:
    if args.checkpoint:
        return args.checkpoint
    path = args.work_dir / "det" / "best.pt"
    if not path.is_file():
        cfg = load_config(CONFIG, DetConfig, [*RECIPE, f"optim.epochs={args.epochs}", f"train.eval_interval={args.epochs}",
                                              f"data.root={args.work_dir / 'synthetic_coco'}"])
        train(cfg, args.work_dir / "det", device="cpu")
    return path


def spearman(a: list[str], b: list[str]) -> float:
    """Spearman's rho of two rankings of the same names (no ties: positions are the ranks)."""
    pos = {name: i for i, name in enumerate(b)}
    n = len(a)
    d2 = sum((i - pos[name]) ** 2 for i, name in enumerate(a))
    return 1 - 6 * d2 / (n * (n * n - 1)) if n > 1 else 1.0


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    ckpt = checkpoint(args)
    fused, meta = load_fused(ckpt, "det")
    evaluator = get_task("det").make_evaluator(request_for(ckpt, meta, batch_size=args.batch_size, progress=False))
    config = QuantConfig(num_calib_batches=args.calib_batches)
    loader, pre = evaluator.calibration_loader(), evaluator.preprocess
    report = quantize_and_check(fused, loader, pre, config, evaluator, CheckOptions(ort=False, progress=False))
    qmodel, fp32, int8 = report.model, report.fp32, report.int8
    batches = collect_batches(loader, args.num_batches)

    start = time.perf_counter()
    fast = rank_layers(qmodel, batches, pre, progress=False)
    t_fast = time.perf_counter() - start
    start = time.perf_counter()
    slow = rank_layers(qmodel, batches, pre, metric_fn=lambda m: evaluator.evaluate(m)["AP"], progress=False)
    t_slow = time.perf_counter() - start

    fast_names, slow_names = [e.name for e in fast], [e.name for e in slow]
    k = args.keep
    overlap = len(set(fast_names[:k]) & set(slow_names[:k]))
    partial = {}
    for label, ranking in (("ours", fast), ("YOLOv6", slow)):
        q, _, _ = quantize_partial(fused, loader, pre, k, config, ranking=ranking, progress=False)
        partial[label] = evaluator.evaluate(q)["AP"]
    val_images = len(evaluator.val_loader.dataset)
    lines = [f"synthetic detector ({meta['scale']} scale, {meta['block']}, {meta['image_size']} px), {len(fast)} "
             f"quantized units, {val_images} val images; FP32 AP {fp32:.2f}, INT8 AP {int8:.2f} (max calibration)",
             "",
             "| ranking | what one unit costs | wall time s | time ratio | top-5 | INT8 AP, top-5 kept float |",
             "|---|---|---|---|---|---|",
             f"| ours: output rel. MSE | {args.num_batches} calibration batches of {args.batch_size} | {t_fast:.1f} | "
             f"1.00x | {', '.join(fast_names[:k])} | {partial['ours']:.2f} |",
             f"| YOLOv6: AP drop | 1 COCO eval on {val_images} images | {t_slow:.1f} | {t_slow / t_fast:.1f}x | "
             f"{', '.join(slow_names[:k])} | {partial['YOLOv6']:.2f} |",
             "",
             f"- top-{k} overlap: {overlap}/{k}; Spearman rho over all {len(fast)} units: "
             f"{spearman(fast_names, slow_names):.2f}",
             f"- units whose AP drop is > 0: {sum(1 for e in slow if (e.metric_drop or 0) > 0)} of {len(slow)} "
             "(AP on a small val set moves in coarse steps: ties among the rest are broken arbitrarily)"]
    text = "\n".join(lines) + "\n"
    publish_report(args.out, text)


if __name__ == "__main__":
    main()
