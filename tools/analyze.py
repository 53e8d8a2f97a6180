"""Explain why a checkpoint quantizes well or badly: the paper's C1/C2 analyses (Fig. 2-4).

    python tools/analyze.py CHECKPOINT [--data DIR] [--num-batches N] [--out DIR]

Loads a training-form checkpoint (a fused one works too, without the per-branch parts), fuses a copy
for the weight analysis and runs a few validation batches (DIR/val, an ImageFolder) through both
forms for the activation analyses. Without --data it feeds random-normal inputs and says so in the
report. Writes PNG plots, report.md and report.json into --out (a folder holding files it did not write is
refused; a rerun replaces only what the last analysis there wrote).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap  # noqa: F401,E402  (this checkout first on sys.path)

from qarep_dense.tasks.cli import BATCH_SIZE, TASK_NAMES, user_error, user_errors  # noqa: E402

if TYPE_CHECKING:
    import torch

log = logging.getLogger("analyze")
# Any task's rep-block network (every task of TASK_NAMES): the weight and BN analyses need only its modules;
# real-image inputs (--data) are for classification checkpoints, the others get random inputs.
# torch and the analysis are imported after parsing, so that --help answers at once; the threshold names
# below are analysis.Thresholds' fields (tests/test_robustness_tools.py checks that they stay so).
THRESHOLD_NAMES = ("weight_channel_spread", "weight_int8_error", "act_max_over_std", "act_channel_spread")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="checkpoint written by this project")
    p.add_argument("--data", type=Path, metavar="DIR",
                   help="dataset root holding val/ (ImageFolder); omitted: random inputs")
    p.add_argument("--num-batches", type=int, default=4, metavar="N", help="batches for the activation statistics")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--image-size", type=int, help="input size (default: the checkpoint's image_size)")
    p.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: CHECKPOINT's folder/analysis-STEM)")
    p.add_argument("--hist-block", help="block of the Fig. 4 histogram (default: first block with an identity)")
    p.add_argument("--hist-channel", type=int, default=0, help="output channel of the Fig. 4 histogram")
    p.add_argument("--threshold", action="append", default=[], metavar="NAME=VALUE",
                   help="override a flag threshold; names: " + ", ".join(THRESHOLD_NAMES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs used without --data")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def parse_thresholds(items: list[str]):
    """``["weight_channel_spread=10", ...]`` -> analysis.Thresholds, with a clear error for a bad name or value."""
    from qarep_dense.analysis import Thresholds

    names = {f.name for f in dataclasses.fields(Thresholds)}
    values = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or name not in names:
            raise ValueError(f"--threshold {item!r}: expected NAME=VALUE with NAME one of {sorted(names)}")
        try:
            values[name] = float(raw)
        except ValueError:
            raise ValueError(f"--threshold {item!r}: {raw!r} is not a number") from None
    return Thresholds(**values)


def _check_args(args: argparse.Namespace) -> None:
    for flag in ("num_batches", "batch_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.data is not None and not (args.data / "val").is_dir():
        raise FileNotFoundError(f"--data {args.data}: expected an ImageFolder split at {args.data / 'val'}")


def _image_batches(args: argparse.Namespace, meta: dict, image_size: int) -> Iterator[torch.Tensor]:
    """Preprocessed validation batches, exactly as evaluation would feed them."""
    from qarep_dense.tasks.classification import preprocess_of, validation_loader

    if "preprocess" not in meta:
        raise ValueError(f"{args.checkpoint}: metadata has no 'preprocess' (mean/std); cannot prepare real images")
    preprocess = preprocess_of(meta)
    loader = validation_loader(args.data, image_size, args.batch_size, args.workers)
    for images, _ in itertools.islice(loader, args.num_batches):
        yield preprocess(images.to(args.device))


def _random_batches(args: argparse.Namespace, image_size: int | list[int],
                    in_channels: int = 3) -> Iterator[torch.Tensor]:
    import torch

    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    gen = torch.Generator().manual_seed(args.seed)
    for _ in range(args.num_batches):
        yield torch.randn(args.batch_size, in_channels, height, width, generator=gen)


def main(argv: list[str] | None = None) -> dict:
    """Run the analysis; returns the report dict (also written to --out/report.json)."""
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> dict:
    """:func:`main` on parsed arguments."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    thresholds = parse_thresholds(args.threshold)
    _check_args(args)
    from qarep_dense.analysis import analyze_model
    from qarep_dense.tasks.registry import load_model

    model, meta = load_model(args.checkpoint, tuple(TASK_NAMES))
    image_size = args.image_size or meta.get("image_size")
    if not image_size:
        raise ValueError(f"{args.checkpoint}: metadata has no image_size; pass --image-size")
    if args.data is not None and meta.get("task") != "cls":
        raise ValueError(f"{args.checkpoint}: --data feeds ImageFolder images, which only a classification ('cls') "
                         f"checkpoint takes; this is a {meta.get('task')!r} checkpoint: omit --data to analyse it "
                         "with random inputs")
    if args.data is not None:
        batches, note = _image_batches(args, meta, image_size), f"images from {args.data / 'val'}"
    else:
        batches = _random_batches(args, image_size)
        note = ("RANDOM-NORMAL inputs (no --data given): activation numbers show the response to noise, "
                "not to images")
    out = args.out or args.checkpoint.parent / f"analysis-{args.checkpoint.stem}"
    info = {"checkpoint": str(args.checkpoint), **{k: meta[k] for k in ("task", "arch", "scale", "block", "num_classes", "fused")
                                                  if k in meta}}
    report = analyze_model(model, batches, out, thresholds=thresholds, hist_block=args.hist_block,
                           hist_channel=args.hist_channel, device=args.device, model_info=info,
                           input_note=note, progress=not args.no_progress)
    for cond in ("C1", "C2"):
        for flag in report["flags"][cond]:
            log.info("%s %s: %s", cond, flag["layer"], "; ".join(flag["reasons"]))
    log.info("wrote %s", out)
    return report


def cli(argv: list[str] | None = None) -> int:
    """``main`` for the command line: a bad checkpoint, path or option prints ``error: ...`` and returns 2."""
    args = parse_args(argv)  # outside the try: --help exits here without importing the engine for the match
    try:
        run(args)
    except user_errors() as err:
        return user_error(err)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
