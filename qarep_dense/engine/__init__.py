"""Training engine: the hook-driven trainer, its hooks, checkpoints and distributed helpers."""
from .checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint
from .distributed import DistInfo, init_distributed
from .hooks import (CheckpointHook, EMAHook, EpochCallbackHook, EvalHook, Hook, LoggerHook, ModelEMA,
                    WarmupCosineLRHook, YoloV6LRHook)
from .logging import MetricLogger, setup_logging
from .trainer import NonFiniteLossError, Trainer, accumulate_steps

__all__ = ["CheckpointError", "load_checkpoint", "load_model_state", "save_checkpoint", "DistInfo",
           "init_distributed", "CheckpointHook", "EMAHook", "EpochCallbackHook", "EvalHook", "Hook", "LoggerHook",
           "ModelEMA", "WarmupCosineLRHook", "YoloV6LRHook", "MetricLogger", "setup_logging", "NonFiniteLossError",
           "Trainer", "accumulate_steps"]
