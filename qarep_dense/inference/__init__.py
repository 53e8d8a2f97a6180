"""Inference on a user's own images (float or ONNX INT8) with the predictions drawn: tools/infer.py's library."""
from .predict import InferOptions, run_inference

__all__ = ["InferOptions", "run_inference"]
