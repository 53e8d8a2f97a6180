"""The command line shared by the training tools:
CONFIG [--set k=v ...] [--work-dir] [--resume | --overwrite] [--device]."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from ..config import ConfigError, load_config
from ..engine.checkpoint import CheckpointError
from ..engine.trainer import NonFiniteLossError
from ..evaluation.evaluators import BATCH_SIZE  # noqa: F401  (the INT8 tools' --batch-size default)

# Errors that mean "fix the input", not "the program broke": one line on the console, exit 2.
# (A stopped run's traceback is in WORK_DIR/train.log.) ConfigError, the data errors
# (AnnotationError, ImageReadError) and loader checks are ValueErrors.
USER_ERRORS = (ConfigError, CheckpointError, FileNotFoundError, FileExistsError, NotADirectoryError, ValueError)


def user_error(err: BaseException, prog: str = "") -> int:
    """A tool's answer to one of :data:`USER_ERRORS`: the message on one line of stderr, exit code 2."""
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


def train_tool(description: str, config_cls: type, train_fn: Callable[..., dict], task: str,
               summary_keys: tuple[str, ...]) -> tuple[Callable, Callable]:
    """``(parse_args(argv), main(argv) -> exit code)`` of a training tool: its whole command line."""

    def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
        return build_parser(description, task).parse_args(argv)

    def main(argv: list[str] | None = None) -> int:
        return train_main(description, config_cls, train_fn, task, summary_keys, argv)

    return parse_args, main


def train_main(description: str, config_cls: type, train_fn: Callable[..., dict], task: str,
               summary_keys: tuple[str, ...], argv: list[str] | None = None) -> int:
    """Parse arguments, load the typed config, run ``train_fn(cfg, work_dir, resume, device, overwrite)``,
    print a summary.

    User errors (bad config key or value, unusable checkpoint, missing or corrupt data, a work dir with an
    earlier run's checkpoints) print one line and exit 2; a diverged run (non-finite loss) exits 1.
    """
    args = build_parser(description, task).parse_args(argv)
    work_dir = args.work_dir or Path("work_dirs") / task / args.config.stem
    try:
        cfg = load_config(args.config, config_cls, args.overrides)
        results = train_fn(cfg, work_dir, resume=args.resume, device=args.device, overwrite=args.overwrite)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except USER_ERRORS as err:
        return user_error(err)
    if results:  # rank 0 only
        print(json.dumps({k: results[k] for k in summary_keys if k in results}, indent=2))
    return 0
