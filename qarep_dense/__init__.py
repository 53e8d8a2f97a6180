"""qarep-dense: quantization-friendly re-parameterized networks deployable in INT8.

Importing the package loads only torch/torchvision; mmseg, mmengine and the quantization
backends are imported lazily by the modules that need them.
"""

__version__ = "0.1.0"
