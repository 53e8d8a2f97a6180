"""INT8 quantization of fused models: PTQ, dead-channel repair, QAT, sensitivity, QDQ ONNX export.

A transformation of the fused model, never a mode of it. Backends (pytorch-quantization today)
and onnx/onnxruntime are imported lazily, inside the functions that need them.
"""
from .api import *  # noqa: F401,F403
from .api import __all__  # noqa: F401
