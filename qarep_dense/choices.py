"""The names and defaults the tools' command lines offer, importable without torch.

A tool builds its parser from these (re-exported by ``tasks.cli``, the application layer) and imports the model
code only after parsing, so ``tools/X.py --help`` answers at once instead of after the 3-10 s it takes to import
torch and the task modules. The modules that implement each choice import it from here: every name and default has
this one definition.
"""
from __future__ import annotations

# The tasks, by the short name the tools and checkpoints use.
TASK_NAMES = {"cls": "classification", "det": "detection", "seg": "segmentation"}

# Activation calibrators: "max" keeps the largest |x| seen; the histogram methods pick a clipping amax from a
# 2048-bin histogram of |x| (percentile of the mass, min MSE, min KL divergence).
CALIBRATORS: tuple[str, ...] = ("max", "percentile", "mse", "entropy")

# Fake-quant libraries, as the command lines spell them (the backend registry's names use "_").
QUANT_BACKENDS: tuple[str, ...] = ("pytorch-quantization", "modelopt")

# Which INT8 kernels ONNX Runtime runs: chosen per machine, its default U8S8, or the exact U8U8.
ORT_KERNEL_MODES: tuple[str, ...] = ("auto", "default", "precise")

# Where a foreign checkpoint comes from (tools/convert_ckpt.py --from, tools/quantize.py --from).
CHECKPOINT_SOURCES: tuple[str, ...] = ("timm", "repvgg", "yolov6")

# Images per batch of the INT8 tools (calibration batches, evaluation) unless --batch-size says otherwise.
BATCH_SIZE = 32
# A task's own evaluation tool: a detector's or segmentor's images are larger.
EVAL_BATCH_SIZE = {"cls": BATCH_SIZE, "det": 16, "seg": 4}

# Accepted normalized error of an exported model (max|ORT - torch| / max|torch| per output). Float32 reordering
# of the same arithmetic gives ~1e-7..1e-6 on our models; a wrong weight, op or baked-in shape gives 1e-2 and more.
ONNX_RTOL = 1e-4
