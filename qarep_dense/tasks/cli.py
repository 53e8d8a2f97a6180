"""The command line shared by the tools: the training tools' CONFIG [--set k=v ...] [--work-dir] [--resume |
--overwrite] [--device], and every tool's answer to a user error.

Light on purpose: a tool builds its parser from this module (which re-exports :mod:`qarep_dense.choices`, the
tools' names and defaults) and imports torch and the task modules only after parsing, so ``--help`` answers at once.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from ..choices import (BATCH_SIZE, CALIBRATORS, CHECKPOINT_SOURCES, EVAL_BATCH_SIZE, ONNX_RTOL,  # noqa: F401
                       ORT_KERNEL_MODES, QUANT_BACKENDS, TASK_NAMES)  # the tools' parsers take them from here
from ..config import ConfigError, load_config


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean "fix the input", not "the program broke": one line on the console, exit 2.

    ConfigError, the data errors (AnnotationError, ImageReadError) and the loader checks are ValueErrors; a
    stopped run's traceback is in WORK_DIR/train.log. A function, so that a tool can write
    ``except user_errors() as err:`` before it has imported the engine (the expression is evaluated only
    when an error arrives)."""
    from ..engine.checkpoint import CheckpointError

    return ConfigError, CheckpointError, FileNotFoundError, FileExistsError, NotADirectoryError, ValueError


def user_error(err: BaseException, prog: str = "") -> int:
    """A tool's answer to one of :func:`user_errors`: the message on one line of stderr, exit code 2."""
    print(f"{prog + ': ' if prog else ''}error: {err}", file=sys.stderr)
    return 2


def build_parser(description: str, task: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help=f"TOML config, e.g. configs/{task}/<name>.toml")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config keys (dotted, type-checked), e.g. --set optim.epochs=10 train.seed=1; "
                             "repeatable")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help=f"output folder (default: work_dirs/{task}/<config name>)")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue exactly from WORK_DIR/last.pt (only optim.epochs and run settings such as "
                            "train.eval_interval may change; other changed keys are refused)")
    again.add_argument("--overwrite", action="store_true",
                       help="start over in a WORK_DIR that holds an earlier run's checkpoints, replacing them "
                            "(without it, or --resume, such a WORK_DIR is refused)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the config's train.device)")
    return parser


def train_tool(description: str, task: str, summary_keys: tuple[str, ...],
               trainer: Callable[[], tuple[type, Callable[..., dict]]]) -> tuple[Callable, Callable]:
    """``(parse_args(argv), main(argv) -> exit code)`` of a training tool: its whole command line.
    ``trainer()`` imports and returns (config class, train function): it is called after parsing."""

    def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
        return build_parser(description, task).parse_args(argv)

    def main(argv: list[str] | None = None) -> int:
        args = parse_args(argv)
        config_cls, train_fn = trainer()
        return train_main(args, config_cls, train_fn, task, summary_keys)

    return parse_args, main


def train_main(args: argparse.Namespace, config_cls: type, train_fn: Callable[..., dict], task: str,
               summary_keys: tuple[str, ...]) -> int:
    """Load the typed config, run ``train_fn(cfg, work_dir, resume, device, overwrite)``, print a summary.

    User errors (bad config key or value, unusable checkpoint, missing or corrupt data, a work dir with an
    earlier run's checkpoints) print one line and exit 2; a diverged run (non-finite loss) exits 1.
    """
    from ..engine.trainer import NonFiniteLossError

    work_dir = args.work_dir or Path("work_dirs") / task / args.config.stem
    try:
        cfg = load_config(args.config, config_cls, args.overrides)
        results = train_fn(cfg, work_dir, resume=args.resume, device=args.device, overwrite=args.overwrite)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except user_errors() as err:
        return user_error(err)
    if results:  # rank 0 only
        print(json.dumps({k: results[k] for k in summary_keys if k in results}, indent=2))
    return 0
