"""Distributed data parallel through torchrun: process-group setup, rank queries, DDP wrapping.

``torchrun --nproc_per_node=N tool.py ...`` sets RANK, LOCAL_RANK and WORLD_SIZE; a plain
``python tool.py`` sets none of them and everything here degrades to a single process.
Backend: NCCL for CUDA devices, Gloo for CPU (so DDP is testable on a laptop).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    launched: bool = False  # started by torchrun (WORLD_SIZE set), even with one process

    @property
    def distributed(self) -> bool:
        # A torchrun job of one process runs the DDP path too (process group, DDP wrapper, samplers):
        # `torchrun --nproc_per_node 1` on one GPU is how that path gets checked at all.
        return self.world_size > 1 or self.launched

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints, logs and results."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def dist_info_from_env() -> DistInfo:
    """Read torchrun's RANK / LOCAL_RANK / WORLD_SIZE (defaults: a single process)."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world,
                    launched=os.environ.get("WORLD_SIZE", "") != "")


def resolve_device(device: str | torch.device | None, info: DistInfo | None = None) -> torch.device:
    """'auto'/None -> cuda if available else cpu; under DDP a bare 'cuda' becomes cuda:LOCAL_RANK.

    A device this machine does not have, or a misspelt one, is a ValueError naming ``--device`` (a user error)."""
    info = info or DistInfo()
    name = "auto" if device is None else str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device {name!r}: not a device name ({err}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(f"--device {name!r}: CUDA is not available on this machine (torch {torch.__version__}, "
                             f"{build}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        if dev.index is None:
            dev = torch.device("cuda", info.local_rank if info.distributed else torch.cuda.current_device())
    return dev


def init_distributed(device: str | torch.device | None = "auto") -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group (if WORLD_SIZE > 1) and pick this process's device."""
    info = dist_info_from_env()
    dev = resolve_device(device, info)
    if info.distributed and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
        log.info("joined process group: rank %d/%d, backend %s, device %s", info.rank, info.world_size,
                 backend, dev)
    return info, dev


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def current_info() -> DistInfo:
    """DistInfo of the initialised process group (a single process when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), _env_int("LOCAL_RANK", 0), dist.get_world_size())
    return DistInfo()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] (just [obj] without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (keeps ranks in step on a shared decision)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def wrap_ddp(model: nn.Module, device: torch.device, info: DistInfo) -> nn.Module:
    """DistributedDataParallel around ``model`` when the job has several processes, else ``model``.

    BN statistics stay per-process (as in YOLOv6 without SyncBN); pass a SyncBatchNorm model to change that.
    """
    if not info.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside a ``torch.compile`` and/or DDP wrapper (or the model itself)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule keeps the module here
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
