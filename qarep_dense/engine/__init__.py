from .checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint

__all__ = ["CheckpointError", "load_checkpoint", "load_model_state", "save_checkpoint"]
