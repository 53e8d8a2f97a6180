"""NVIDIA pytorch-quantization 2.1.3 as the fake-quant backend (the paper's toolkit).

Imported only through :func:`qarep_dense.quant.backends.get_backend`. The package's own module
swap (``quant_modules.initialize``) monkey-patches ``torch.nn``; we never call it and build each
quantized layer explicitly, keeping groups, dilation, padding, stride, bias and weights.
"""
from __future__ import annotations

import copy
import logging
import sys
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Iterator

import torch
from pytorch_quantization import calib as pq_calib
from pytorch_quantization import nn as pq_nn
from pytorch_quantization.nn.modules import _utils as pq_module_utils
from pytorch_quantization.tensor_quant import QuantDescriptor
from torch import nn

from ..config import HISTOGRAM_CALIBRATORS
from .tensor_quantizer import TensorQuantizerBackend

log = logging.getLogger(__name__)

_QUANT_LAYERS = (pq_nn.QuantConv2d, pq_nn.QuantConvTranspose2d, pq_nn.QuantLinear)


@contextmanager
def _quiet_absl() -> Iterator[None]:
    """pytorch-quantization logs a warning per quantizer on every state change; mute it briefly."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class _CallerNames:
    """What pytorch-quantization's ``init_quantizer`` reads of ``inspect.stack()``: each frame's function name.

    The package checks ``inspect.stack()[1].function == "__init__"`` once per quantized layer it builds.
    ``inspect.stack()`` resolves every frame's source file and context lines, and for a frame of code compiled
    from a string (pytest-xdist's workers run that way) it searches every loaded module: 0.2 s per layer in a
    test worker, most of a small model's whole search (``benchmarks/bench_overheads.py``). The names alone are
    what the check reads.
    """

    @staticmethod
    def stack() -> list[SimpleNamespace]:
        frame, frames = sys._getframe(1), []
        while frame is not None:
            frames.append(SimpleNamespace(function=frame.f_code.co_name))
            frame = frame.f_back
        return frames


@contextmanager
def _building_layers() -> Iterator[None]:
    """Quiet (:func:`_quiet_absl`) and with :class:`_CallerNames` for the package's caller check."""
    real = pq_module_utils.inspect
    pq_module_utils.inspect = _CallerNames
    try:
        with _quiet_absl():
            yield
    finally:
        pq_module_utils.inspect = real


def _explicit_padding(layer: nn.Conv2d) -> tuple[int, int]:
    if not isinstance(layer.padding, str):
        return tuple(layer.padding)
    if layer.padding == "valid":
        return (0, 0)
    # padding="same" (stride 1): total padding dilation*(k-1), symmetric only for odd kernels.
    pads = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size)]
    if any(p % 2 for p in pads):
        raise ValueError(f"cannot quantize a Conv2d with padding='same' and an even kernel {layer.kernel_size}")
    return tuple(p // 2 for p in pads)


class PytorchQuantizationBackend(TensorQuantizerBackend):
    """:class:`~qarep_dense.quant.backends.QuantBackend` over pytorch-quantization's TensorQuantizer."""

    name = "pytorch_quantization"
    quantizer_types = (pq_nn.TensorQuantizer,)
    layer_types = _QUANT_LAYERS
    max_calibrator_types = (pq_calib.MaxCalibrator,)
    histogram_calibrator_types = (pq_calib.HistogramCalibrator,)

    def quiet(self):
        return _quiet_absl()

    # --- building ---------------------------------------------------------------------------
    def _descriptors(self, axis: int, weight_bits: int, act_bits: int, calibrator: str):
        method = "histogram" if calibrator in HISTOGRAM_CALIBRATORS else "max"
        return (QuantDescriptor(num_bits=act_bits, calib_method=method),
                QuantDescriptor(num_bits=weight_bits, axis=(axis,)))

    def quant_layer(self, layer: nn.Module, weight_bits: int, act_bits: int, calibrator: str,
                    num_bins: int) -> nn.Module:
        # torch's own classes (nn.modules.X): the package's quant_modules.initialize() patch replaces nn.X.
        desc_in, desc_w = self._descriptors(self.weight_axis(layer), weight_bits, act_bits, calibrator)
        kw = dict(quant_desc_input=desc_in, quant_desc_weight=desc_w)
        has_bias = layer.bias is not None
        with _building_layers():
            if type(layer) is nn.modules.Conv2d:
                q = pq_nn.QuantConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                      _explicit_padding(layer), layer.dilation, layer.groups, has_bias,
                                      layer.padding_mode, **kw)
            elif type(layer) is nn.modules.ConvTranspose2d:
                q = pq_nn.QuantConvTranspose2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                               layer.padding, layer.output_padding, layer.groups, has_bias,
                                               layer.dilation, layer.padding_mode, **kw)
            elif type(layer) is nn.modules.Linear:
                q = pq_nn.QuantLinear(layer.in_features, layer.out_features, has_bias, **kw)
            else:
                raise TypeError(f"no quantized counterpart for {type(layer).__name__}")
        q.to(device=layer.weight.device, dtype=layer.weight.dtype)
        with torch.no_grad():
            q.weight.copy_(layer.weight)
            if has_bias:
                q.bias.copy_(layer.bias)
        q.weight.requires_grad_(layer.weight.requires_grad)
        self.set_bins(q.input_quantizer, num_bins)
        return q.train(layer.training)

    def act_quantizer(self, act_bits: int, calibrator: str, num_bins: int) -> nn.Module:
        method = "histogram" if calibrator in HISTOGRAM_CALIBRATORS else "max"
        with _quiet_absl():
            q = pq_nn.TensorQuantizer(QuantDescriptor(num_bits=act_bits, calib_method=method))
        self.set_bins(q, num_bins)
        return q

    # --- export -----------------------------------------------------------------------------
    @contextmanager
    def export_mode(self, model: nn.Module) -> Iterator[nn.Module]:
        """Yield an export-ready copy (weight quantizers under 8 bits widened exactly, see
        :meth:`widen_weight_quantizers`) and make TensorQuantizer emit ONNX QuantizeLinear/DequantizeLinear."""
        export = copy.deepcopy(model).eval()
        self.check_exportable(export)
        self.widen_weight_quantizers(export)
        # The package reads this class attribute at forward time; it is restored on exit.
        previous = pq_nn.TensorQuantizer.use_fb_fake_quant
        pq_nn.TensorQuantizer.use_fb_fake_quant = True
        try:
            with _quiet_absl():
                yield export
        finally:
            pq_nn.TensorQuantizer.use_fb_fake_quant = previous
