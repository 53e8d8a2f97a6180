"""RepVGG vs QARepVGG vs RepOpt-VGG on scikit-learn's digits: FP32 vs INT8 PTQ, per calibrator, with and
without dead-channel repair, over seeds and the two recipes of REFERENCE §8.

    python benchmarks/bench_digits_ptq.py --seeds 0 1 --epochs 8 --out benchmarks/results/digits_ptq.md

gentle: lr 0.1, wd 1e-4; aggressive: lr 0.4, wd 5e-4 (RepVGG always with its custom L2, which also decays
the identity-BN gammas as RepVGG's official training does; the others with normal L2). RepOpt trains a
Hyper-Search model first and reuses its scales. Every number comes from a real training run and a real
evaluation on the 360 held-out digits.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

import torch

from qarep_dense.config import load_config
from qarep_dense.tasks.classification import ClsConfig, train
from qarep_dense.tasks.quant_check import CheckOptions, QuantConfig, quantize_and_check
from qarep_dense.tasks.registry import get_task, load_fused
from qarep_dense.tasks.splits import request_for

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "cls"
RECIPES = {"gentle": ["optim.lr=0.1", "optim.weight_decay=1e-4"], "aggressive": ["optim.lr=0.4", "optim.weight_decay=5e-4"]}
CALIBRATORS = ("max", "percentile", "entropy", "mse")


def train_block(block: str, recipe: str, seed: int, epochs: int, work: Path, data: Path) -> Path:
    run = work / f"{recipe}_s{seed}_{block}"
    if not (run / "results.json").is_file():
        extra = [f"repopt.hs_checkpoint={work / f'{recipe}_s{seed}_hs' / 'best.pt'}"] if block == "repopt" else []
        cfg = load_config(CONFIGS / f"digits_{block}.toml", ClsConfig,
                          [*RECIPES[recipe], f"optim.epochs={epochs}", f"train.seed={seed}", f"data.root={data}",
                           "train.progress=false", *extra])
        train(cfg, run, device="cpu")
    return run / "deploy.pt"


def quantize_rows(deploy: Path, data: Path) -> dict:
    model, meta = load_fused(deploy, "cls")
    evaluator = get_task("cls").make_evaluator(request_for(deploy, meta, data, batch_size=64, progress=False))
    out = {"fp32": evaluator.evaluate(model)["top1"]}
    for cal in CALIBRATORS:
        for repair in (False, True):
            report = quantize_and_check(model, evaluator.calibration_loader(), evaluator.preprocess,
                                        QuantConfig(calibrator=cal, num_calib_batches=4, repair_dead_channels=repair),
                                        evaluator, CheckOptions(ort=False, progress=False), fp32=out["fp32"])
            out[f"{cal}{'+repair' if repair else ''}"] = report.int8
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--blocks", nargs="+", default=["repvgg", "qarepvgg", "repopt"])
    p.add_argument("--work-dir", type=Path, default=Path("work_dirs/bench_digits_ptq"))
    p.add_argument("--data", type=Path, default=Path("data/digits"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/digits_ptq.md"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    results: dict[tuple[str, str], list[dict]] = {}
    for recipe in args.recipes:
        for seed in args.seeds:
            if "repopt" in args.blocks:
                train_block("hs", recipe, seed, args.epochs, args.work_dir, args.data)
            for block in args.blocks:
                row = quantize_rows(train_block(block, recipe, seed, args.epochs, args.work_dir, args.data), args.data)
                results.setdefault((recipe, block), []).append(row)
                print(recipe, seed, block, json.dumps({k: round(v, 2) for k, v in row.items()}), flush=True)
    cols = ["fp32", *[f"{c}{r}" for c in CALIBRATORS for r in ("", "+repair")]]
    lines = [f"digits (1437 train / 360 val, 32x32), A0h, {args.epochs} epochs, seeds {args.seeds}; "
             "top-1 % as mean (min-max) over seeds; INT8 = W8A8 PTQ of the fused model, 4 calibration batches of 64",
             "", "| recipe | block | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for (recipe, block), rows in results.items():
        cells = []
        for c in cols:
            vals = [r[c] for r in rows]
            cells.append(f"{statistics.mean(vals):.1f} ({min(vals):.1f}-{max(vals):.1f})")
        lines.append(f"| {recipe} | {block} | " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    (args.out.with_suffix(".json")).write_text(json.dumps({f"{k[0]}/{k[1]}": v for k, v in results.items()}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
