"""NVIDIA Model Optimizer (nvidia-modelopt 0.47.0) as the fake-quant backend: the maintained successor
of pytorch-quantization, and what a TensorRT user quantizes with today.

Imported only through :func:`qarep_dense.quant.backends.get_backend`. Layers are built one at a
time by modelopt's own module conversion (``QuantModuleRegistry.convert``, what ``mtq.quantize``
does per module), so the engine's rule table, output quantizers, repair, CLE, bias correction and
QAT run unchanged on top. Calibration is driven by hand like the other backend: modelopt's
config-driven histogram calibration fails (``HistogramCalibrator.compute_amax() missing 'method'``),
so its histogram is collected and the amax computed by :mod:`.histogram`.

Settings, chosen to equal the pytorch-quantization backend (a test pins the two to float rounding):
signed int8 everywhere, full range [-128, 127] (``narrow_range`` off: modelopt's ONNX export refuses
signed narrow range, and pytorch-quantization's default is full range too), weights per output
channel, activations per tensor, the first layer's input included. Post-ReLU activations stay signed
here (modelopt's ``INT8_DEFAULT_CFG`` makes them signed as well): the exporter makes them
onnxruntime-fusable exactly (Q/DQ in front of each ReLU, uint8 with zero point 128), and TensorRT,
the other target, takes only signed int8 activations. ``unsigned: True`` on those quantizers would
give post-ReLU tensors one more bit, but it changes the grid, so the two backends would no longer agree.

pytorch-quantization's ``quant_modules.initialize()`` replaces ``torch.nn.Conv2d`` and friends by its
own classes. modelopt keys its module registry by the ``torch.nn`` classes it sees when imported, so
importing it under that patch leaves Conv2d unregistered for the rest of the process. This module
imports modelopt, and converts layers, with ``torch.nn`` restored to torch's own classes for the
moment (:func:`torch_nn_unpatched`); the other backend never calls ``initialize()``.
"""
from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from ..config import HISTOGRAM_CALIBRATORS
from .tensor_quantizer import TensorQuantizerBackend


@contextmanager
def torch_nn_unpatched() -> Iterator[None]:
    """``torch.nn`` with torch's own module classes for the duration (any class that a monkey patch such as
    pytorch-quantization's ``quant_modules.initialize()`` put there is restored on exit)."""
    import torch.nn.modules as originals

    patched = {name: getattr(nn, name) for name in originals.__all__
               if getattr(nn, name, None) is not getattr(originals, name)}
    for name in patched:
        setattr(nn, name, getattr(originals, name))
    try:
        yield
    finally:
        for name, cls in patched.items():
            setattr(nn, name, cls)


with torch_nn_unpatched(), warnings.catch_warnings():
    warnings.simplefilter("ignore")  # import-time deprecation notices of modelopt's dependencies
    from modelopt.torch.quantization import calib as mo_calib
    from modelopt.torch.quantization.config import QuantizerAttributeConfig
    from modelopt.torch.quantization.nn import QuantModuleRegistry, TensorQuantizer
    from modelopt.torch.quantization.nn.modules.quant_module import QuantLinearConvBase

_FLOAT_LAYERS = (nn.modules.Conv2d, nn.modules.ConvTranspose2d, nn.modules.Linear)


def _quantizer_config(num_bits: int, axis: int | None, calibrator: str) -> QuantizerAttributeConfig:
    return QuantizerAttributeConfig(num_bits=num_bits, axis=axis, unsigned=False, narrow_range=False,
                                    calibrator="histogram" if calibrator in HISTOGRAM_CALIBRATORS else "max")


class ModeloptBackend(TensorQuantizerBackend):
    """:class:`~qarep_dense.quant.backends.QuantBackend` over modelopt's TensorQuantizer and quantized layers."""

    name = "modelopt"
    quantizer_types = (TensorQuantizer,)
    layer_types = (QuantLinearConvBase,)
    max_calibrator_types = (mo_calib.MaxCalibrator,)
    histogram_calibrator_types = (mo_calib.HistogramCalibrator,)

    # --- building ------------------------------------------------------------------------------
    def quant_layer(self, layer: nn.Module, weight_bits: int, act_bits: int, calibrator: str,
                    num_bins: int) -> nn.Module:
        if type(layer) not in _FLOAT_LAYERS:
            raise TypeError(f"no quantized counterpart for {type(layer).__name__}")
        try:
            with torch_nn_unpatched():
                q = QuantModuleRegistry.convert(copy.deepcopy(layer))  # same geometry, weights, bias
        except KeyError as err:
            raise RuntimeError("modelopt was imported while pytorch-quantization's quant_modules.initialize() "
                               "patched torch.nn, so it cannot quantize torch's own layers in this process; import "
                               "qarep_dense's modelopt backend (or modelopt) before initialize(), or do not call "
                               "initialize()") from err
        q.input_quantizer.set_from_attribute_config(_quantizer_config(act_bits, None, calibrator))
        q.weight_quantizer.set_from_attribute_config(_quantizer_config(weight_bits, self.weight_axis(q), "max"))
        self.set_bins(q.input_quantizer, num_bins)
        return q.train(layer.training)

    def act_quantizer(self, act_bits: int, calibrator: str, num_bins: int) -> nn.Module:
        q = TensorQuantizer(_quantizer_config(act_bits, None, calibrator))
        self.set_bins(q, num_bins)
        return q

    # --- what differs from pytorch-quantization --------------------------------------------------
    def stop_calibration(self, quantizer: nn.Module) -> None:
        quantizer._if_calib = False  # modelopt 0.47 declares ``disable_calib`` as a property

    def idle_quantizers(self, layer: nn.Module) -> list[nn.Module]:
        return [layer.output_quantizer]  # every quantized layer has one; the engine places its own

    # --- export --------------------------------------------------------------------------------
    @contextmanager
    def export_mode(self, model: nn.Module) -> Iterator[nn.Module]:
        """Yield an export-ready copy (weight quantizers under 8 bits widened exactly, see
        :meth:`widen_weight_quantizers`). modelopt's fake-quant function carries its own ONNX symbolic
        (QuantizeLinear/DequantizeLinear), which ``torch.onnx.export(..., dynamo=False)`` uses as it is."""
        export = copy.deepcopy(model).eval()
        self.check_exportable(export)
        self.widen_weight_quantizers(export)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield export
