"""Detection data-loader throughput (images/s): mosaic on vs off, per image size and worker count.

Runs on synthetic COCO-format data (640x480 source images, like COCO's typical size), one epoch per setting
after one warm-up epoch, OpenCV single-threaded; worker start-up is included, as in training (workers are
not persistent).
Prints a markdown table and the mosaic-off / mosaic-on ratio for each setting. Not a test: numbers depend
on the machine and on whatever else runs on it.

    python benchmarks/bench_det_loader.py --num-images 64 --sizes 320 640 --workers 0 2
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import cv2
import torch

from qarep_dense.data.coco import DetAugment
from qarep_dense.data.det_loader import make_det_loader, set_loader_epoch
from qarep_dense.data.synthetic.coco import generate_coco


def epoch_rate(loader, epoch: int) -> float:
    """Images per second over one pass of ``loader``."""
    set_loader_epoch(loader, epoch)
    start, count = time.perf_counter(), 0
    for images, _, _ in loader:
        count += images.shape[0]
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/synthetic/coco_bench", help="synthetic data folder (reused)")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    # make_det_loader switches OpenCV's thread pool off (process-wide) once a loader has workers; do it up
    # front so every row, workers 0 included, runs OpenCV single-threaded and the rows compare fairly
    cv2.setNumThreads(0)

    paths = generate_coco(args.root, num_train=args.num_images, num_val=0, image_size=(480, 640), seed=0)
    print(f"# det loader throughput: {args.num_images} synthetic 640x480 images, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"load avg {os.getloadavg()[0]:.1f}")
    print("| size | workers | mosaic on (img/s) | mosaic off (img/s) | off / on |")
    print("|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        for workers in args.workers:
            rates = {}
            for mosaic in (True, False):
                loader = make_det_loader(paths["train_images"], paths["train_ann"], size, args.batch_size,
                                         train=True, augment=DetAugment(), workers=workers, seed=0)
                loader.dataset.mosaic_enabled = mosaic
                epoch_rate(loader, 0)  # warm-up: page cache, allocator
                rates[mosaic] = epoch_rate(loader, 1)
            print(f"| {size} | {workers} | {rates[True]:.1f} | {rates[False]:.1f} | "
                  f"{rates[False] / rates[True]:.2f} |", flush=True)
    eval_loader = make_det_loader(paths["train_images"], paths["train_ann"], max(args.sizes), args.batch_size,
                                  train=False, workers=0)
    epoch_rate(eval_loader, 0)
    print(f"\neval (letterbox only) at {max(args.sizes)}, workers 0: {epoch_rate(eval_loader, 0):.1f} img/s")


if __name__ == "__main__":
    main()
