"""The command line shared by the training tools: CONFIG [--set k=v ...] [--work-dir] [--resume] [--device]."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from ..config import ConfigError, load_config


def train_main(description: str, config_cls: type, train_fn: Callable[..., dict], task: str,
               summary_keys: tuple[str, ...], argv: list[str] | None = None) -> int:
    """Parse arguments, load the typed config, run ``train_fn(cfg, work_dir, resume, device)``, print a summary."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help=f"TOML config, e.g. configs/{task}/...toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted, type-checked), e.g. --set optim.epochs=10; repeatable")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help=f"output folder (default: work_dirs/{task}/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue exactly from WORK_DIR/last.pt")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the config's train.device)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, config_cls, args.overrides)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    work_dir = args.work_dir or Path("work_dirs") / task / args.config.stem
    results = train_fn(cfg, work_dir, resume=args.resume, device=args.device)
    if results:  # rank 0 only
        print(json.dumps({k: results[k] for k in summary_keys if k in results}, indent=2))
    return 0
