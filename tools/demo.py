"""The main job: the paper's story on the embedded data, three tasks, one results folder.

    python tools/demo.py                         # cls, det and seg; writes work_dirs/demo/summary.md
    python tools/demo.py --quick                 # one seed's story, cls and det (work_dirs/demo_quick)
    python tools/demo.py --out DIR --seeds 5 6 7  # all three tasks over seeds 5, 6 and 7
    python tools/demo.py --cls-models repvgg_custom,qarepvgg,repopt --dense-blocks repvgg,qarepvgg,repopt
                                                 # with RepOpt-VGG's baseline rows in every task
    python tools/demo.py --cls-models repvgg_custom,repvgg_normal,qarepvgg,repopt   # every classifier

Classification (the story): RepVGG with its authors' recipe (custom L2 + identity-gamma decay)
and QARepVGG (and, with --cls-models, RepOpt-VGG and RepVGG with normal L2) on scikit-learn's digits
over seeds; FP32, INT8 (max and entropy calibration), weights-only and activations-only INT8, the mechanism
figures per model (tools/analyze.py), the dead-channel repair, and the paper's Fig. 2-4 for the RepVGG
seed with the largest INT8 drop above its QARepVGG twin. Detection and segmentation (real handwriting: digit
canvases): each block's classifier of the same seed fine-tuned as a detector and as an FCN segmentor; FP32 vs
INT8 (and ONNX Runtime INT8) AP / mIoU, tools/quantize.py's all-INT8 choice, and the mechanism per backbone
stage, classifier -> fine-tuned. Speed: FP32 vs ORT INT8 latency. Pictures: FP32 and INT8 predictions side by
side on validation canvases.

Independent stages run side by side (--jobs, default 2), each on one thread, so a result does not
depend on --jobs or on what ran beside it. Every stage leaves a done-marker in OUT/.stages (written
atomically after it succeeded): a rerun reuses finished stages and only redoes what is missing. The
demo writes only inside OUT and never deletes or replaces a file it did not write (a summary.md of yours
is refused up front). Each stage runs in a process of its own, logged to OUT/logs/<stage>.log; Ctrl-C or
a kill ends them all. The work itself is qarep_dense/demo/main_job.py.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap  # noqa: F401,E402  (this checkout first on sys.path)

from qarep_dense.tasks.cli import user_errors  # noqa: E402

if TYPE_CHECKING:
    from qarep_dense.demo.main_job import DemoOptions


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None = None) -> DemoOptions:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=None, help="comma-separated subset of cls,det,seg (default all; --quick "
                   "cls,det)")
    p.add_argument("--quick", action="store_true", help="one seed's story: RepVGG (custom L2) and QARepVGG, "
                   "and the two detectors fine-tuned from them")
    p.add_argument("--tiny", action="store_true", help="toy models and data (for tests; numbers are meaningless)")
    p.add_argument("--seeds", type=int, nargs="+", help="training seeds, each once, for all tasks "
                   "(default: 0 1 2 for cls, 0 for det and seg; --quick 2)")
    p.add_argument("--cls-epochs", type=int, help="classification epochs, at least 1 (default 40)")
    p.add_argument("--det-epochs", type=int, help="detection epochs, at least 1 (default 10)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default work_dirs/demo, --quick "
                   "work_dirs/demo_quick, --tiny work_dirs/demo_tiny); reused only under the same settings")
    p.add_argument("--cls-models", help="classifiers to train, from repvgg_custom,repvgg_normal,qarepvgg,repopt "
                   "(default repvgg_custom,qarepvgg: the story's pair; repopt adds RepOpt-VGG's baseline rows: its "
                   "Hyper-Search run and a classifier per seed)")
    p.add_argument("--dense-blocks", help="blocks of the detection and segmentation rows, from repvgg,qarepvgg,repopt "
                   "(default repvgg,qarepvgg; repopt adds its classifier, a Hyper-Search detector and its models)")
    p.add_argument("--jobs", type=int, default=2, help="stages run side by side, one thread each (default 2: "
                   "one per core of a 2-core machine); the numbers do not depend on it")
    p.add_argument("--threads", type=int, default=2, help="threads of the latency measurement (speed stages, "
                   "which run alone)")
    args = p.parse_args(argv)
    from qarep_dense.demo.main_job import DemoOptions  # after parsing: --help needs no torch

    tasks = _names(args.tasks)
    profile = "tiny" if args.tiny else ("quick" if args.quick else "full")
    try:
        return DemoOptions(out=args.out, tasks=tasks, profile=profile, seeds=args.seeds, cls_epochs=args.cls_epochs,
                           det_epochs=args.det_epochs, threads=args.threads, jobs=args.jobs,
                           cls_models=_names(args.cls_models), dense_blocks=_names(args.dense_blocks))
    except ValueError as err:
        p.error(str(err))


def main(argv: list[str] | None = None) -> Path:
    return run(parse_args(argv))


def run(opts: DemoOptions) -> Path:
    """The main job with the parsed options; the summary's path."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from qarep_dense.demo.main_job import Demo

    demo = Demo(opts)
    path = demo.run()
    print(f"[demo] summary: {path}")
    if demo.failed:
        raise RuntimeError(f"{len(demo.failed)} stage(s) failed: {', '.join(demo.failed)} (see {path} and "
                           f"{demo.out / 'logs'}); rerun to retry them, finished stages are reused")
    return path


if __name__ == "__main__":
    options = parse_args()  # outside the try: --help exits here without importing the engine for the match
    try:
        run(options)
    except (*user_errors(), RuntimeError) as err:  # also: stages that failed (named, with their logs)
        raise SystemExit(f"demo: error: {err}") from err
