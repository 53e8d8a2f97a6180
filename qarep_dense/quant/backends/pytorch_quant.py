"""NVIDIA pytorch-quantization 2.1.3 as the fake-quant backend (the paper's toolkit).

Imported only through :func:`qarep_dense.quant.backends.get_backend`. The package's own module
swap (``quant_modules.initialize``) monkey-patches ``torch.nn``; we never call it and build each
quantized layer explicitly, keeping groups, dilation, padding, stride, bias and weights.
"""
from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from typing import Iterator

import torch
from pytorch_quantization import calib as pq_calib
from pytorch_quantization import nn as pq_nn
from pytorch_quantization.tensor_quant import QuantDescriptor
from torch import nn

from ..calibration import entropy_amax, mse_amax
from ..config import HISTOGRAM_CALIBRATORS

log = logging.getLogger(__name__)

_QUANT_LAYERS = (pq_nn.QuantConv2d, pq_nn.QuantConvTranspose2d, pq_nn.QuantLinear)
# A zero amax means "all zeros" in the package but a zero scale in ONNX: keep it tiny instead.
# It stays below the package's own zero threshold (2**-24), so fake quant still outputs zeros.
_MIN_AMAX = 1e-8


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


def _weight_axis(layer: nn.Module) -> int:
    # ConvTranspose weights are (C_in, C_out/groups, kH, kW): output channels sit on axis 1.
    return 1 if isinstance(layer, (nn.ConvTranspose2d, pq_nn.QuantConvTranspose2d)) else 0


def _set_amax(quantizer: pq_nn.TensorQuantizer, amax: torch.Tensor) -> None:
    amax = amax.detach().float().clamp_min(_MIN_AMAX)
    if "_amax" in quantizer._buffers:
        quantizer._amax = amax  # replace (shape may differ after a re-calibration)
    else:
        quantizer.register_buffer("_amax", amax)


class PytorchQuantizationBackend:
    """:class:`~qarep_dense.quant.backends.QuantBackend` over pytorch-quantization's TensorQuantizer."""

    name = "pytorch_quantization"

    # --- building ---------------------------------------------------------------------------
    def _descriptors(self, axis: int, weight_bits: int, act_bits: int, calibrator: str):
        method = "histogram" if calibrator in HISTOGRAM_CALIBRATORS else "max"
        return (QuantDescriptor(num_bits=act_bits, calib_method=method),
                QuantDescriptor(num_bits=weight_bits, axis=(axis,)))

    def quant_layer(self, layer: nn.Module, weight_bits: int, act_bits: int, calibrator: str,
                    num_bins: int) -> nn.Module:
        desc_in, desc_w = self._descriptors(_weight_axis(layer), weight_bits, act_bits, calibrator)
        kw = dict(quant_desc_input=desc_in, quant_desc_weight=desc_w)
        has_bias = layer.bias is not None
        with _quiet_absl():
            if type(layer) is nn.Conv2d:
                q = pq_nn.QuantConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                      _explicit_padding(layer), layer.dilation, layer.groups, has_bias,
                                      layer.padding_mode, **kw)
            elif type(layer) is nn.ConvTranspose2d:
                q = pq_nn.QuantConvTranspose2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                               layer.padding, layer.output_padding, layer.groups, has_bias,
                                               layer.dilation, layer.padding_mode, **kw)
            elif type(layer) is nn.Linear:
                q = pq_nn.QuantLinear(layer.in_features, layer.out_features, has_bias, **kw)
            else:
                raise TypeError(f"no quantized counterpart for {type(layer).__name__}")
        q.to(device=layer.weight.device, dtype=layer.weight.dtype)
        with torch.no_grad():
            q.weight.copy_(layer.weight)
            if has_bias:
                q.bias.copy_(layer.bias)
        q.weight.requires_grad_(layer.weight.requires_grad)
        self._set_bins(q.input_quantizer, num_bins)
        return q.train(layer.training)

    def act_quantizer(self, act_bits: int, calibrator: str, num_bins: int) -> nn.Module:
        method = "histogram" if calibrator in HISTOGRAM_CALIBRATORS else "max"
        with _quiet_absl():
            q = pq_nn.TensorQuantizer(QuantDescriptor(num_bits=act_bits, calib_method=method))
        self._set_bins(q, num_bins)
        return q

    @staticmethod
    def _set_bins(quantizer: pq_nn.TensorQuantizer, num_bins: int) -> None:
        if isinstance(quantizer._calibrator, pq_calib.HistogramCalibrator):
            quantizer._calibrator._num_bins = int(num_bins)

    # --- queries ----------------------------------------------------------------------------
    def is_quantizer(self, module: nn.Module) -> bool:
        return isinstance(module, pq_nn.TensorQuantizer)

    def is_quant_layer(self, module: nn.Module) -> bool:
        return isinstance(module, _QUANT_LAYERS)

    def layer_quantizers(self, layer: nn.Module) -> dict[str, nn.Module]:
        return {"input": layer.input_quantizer, "weight": layer.weight_quantizer}

    def amax(self, quantizer: nn.Module) -> torch.Tensor | None:
        return quantizer.amax

    def set_enabled(self, quantizer: nn.Module, enabled: bool) -> None:
        quantizer.enable() if enabled else quantizer.disable()

    def _weight_quantizer_ids(self, model: nn.Module) -> set[int]:
        return {id(m.weight_quantizer) for m in model.modules() if self.is_quant_layer(m)}

    def _act_quantizers(self, model: nn.Module) -> Iterator[tuple[str, pq_nn.TensorQuantizer]]:
        weights = self._weight_quantizer_ids(model)
        for name, m in model.named_modules():
            if isinstance(m, pq_nn.TensorQuantizer) and id(m) not in weights:
                yield name, m

    # --- calibration ------------------------------------------------------------------------
    def begin_calibration(self, model: nn.Module) -> None:
        weights = self._weight_quantizer_ids(model)
        with _quiet_absl():
            for m in model.modules():
                if not isinstance(m, pq_nn.TensorQuantizer):
                    continue
                if id(m) in weights:
                    m.disable()  # weights are calibrated from the tensors themselves
                    continue
                m._calibrator.reset()
                m.enable()
                m.disable_quant()
                m.enable_calib()

    def end_calibration(self, model: nn.Module, calibrator: str, percentile: float, start_bin: int,
                        stride: int) -> dict[str, float]:
        amaxes: dict[str, float] = {}
        with _quiet_absl():
            for name, q in self._act_quantizers(model):
                q.disable_calib()
                amax = self._compute_amax(q, calibrator, percentile, start_bin, stride)
                if amax is None:
                    log.warning("quantizer %s saw no calibration data; it is left disabled (float)", name)
                    q.disable()
                    continue
                _set_amax(q, amax)
                q.enable_quant()
                amaxes[name] = float(q.amax)
            for m in model.modules():
                if self.is_quant_layer(m):
                    m.weight_quantizer.enable()
                    m.weight_quantizer.enable_quant()
        self.refresh_weight_amax(model)
        return amaxes

    def load_calibrated(self, model: nn.Module, state: dict) -> None:
        """Load ``state`` (a calibrated model's state dict) into the uncalibrated fake-quant ``model`` of the
        same structure, and put every quantizer in the mode calibration left it in: quantizing with the saved
        amax, or off (float) where the state holds none (a quantizer that saw no calibration data)."""
        weights = self._weight_quantizer_ids(model)
        with _quiet_absl():
            for name, q in model.named_modules():
                if not isinstance(q, pq_nn.TensorQuantizer):
                    continue
                amax = state.get(f"{name}._amax")
                q.disable_calib()
                if amax is None and id(q) not in weights:
                    q.disable()
                    continue
                if amax is not None:
                    _set_amax(q, amax)  # the buffer must exist before loading (pytorch-quantization's own
                    # fallback moves it to CUDA)
                q.enable()
                q.enable_quant()
            model.load_state_dict(state, strict=True)
        self.refresh_weight_amax(model)

    @staticmethod
    def _compute_amax(q: pq_nn.TensorQuantizer, calibrator: str, percentile: float, start_bin: int,
                      stride: int) -> torch.Tensor | None:
        cal = q._calibrator
        if isinstance(cal, pq_calib.MaxCalibrator):
            return cal.compute_amax()
        if cal._calib_hist is None:
            return None
        if calibrator == "percentile":
            amax = cal.compute_amax("percentile", percentile=percentile)
        else:
            hist = cal._calib_hist.int().cpu().numpy()
            edges = cal._calib_bin_edges.cpu().numpy()
            fn = mse_amax if calibrator == "mse" else entropy_amax
            amax = torch.tensor(fn(hist, edges, q.num_bits, q.unsigned, start_bin, stride))
        if not torch.isfinite(torch.as_tensor(amax)).all():
            raise RuntimeError(f"{calibrator} calibration produced a non-finite amax ({amax}); "
                               "the calibration activations contain inf/NaN")
        return torch.as_tensor(amax, device=cal._calib_hist.device)

    def refresh_weight_amax(self, model: nn.Module) -> None:
        for m in model.modules():
            if self.is_quant_layer(m):
                axis = _weight_axis(m)
                w = m.weight.detach()
                dims = [d for d in range(w.dim()) if d != axis]
                _set_amax(m.weight_quantizer, w.abs().amax(dim=dims, keepdim=True))

    # --- export -----------------------------------------------------------------------------
    @contextmanager
    def export_mode(self, model: nn.Module) -> Iterator[nn.Module]:
        """Yield an export-ready copy and make TensorQuantizer emit ONNX QuantizeLinear/DequantizeLinear.

        ONNX has only 8-bit QDQ here, so a weight quantizer with fewer bits is re-expressed exactly:
        its weights are snapped to their k-bit grid and the quantizer becomes 8-bit with the same
        step (amax * 127 / (2**(k-1) - 1)); every snapped value is on the 8-bit grid and in range.
        """
        export = copy.deepcopy(model).eval()
        weights = self._weight_quantizer_ids(export)
        for name, q in export.named_modules():
            if not isinstance(q, pq_nn.TensorQuantizer) or q._disabled:
                continue
            if q.amax is None:
                raise RuntimeError(f"cannot export {name}: it has no amax (calibrate the model first)")
            if id(q) not in weights and q.num_bits != 8:
                raise ValueError(f"cannot export {name}: ONNX QDQ needs 8-bit activations, got {q.num_bits}")
        for m in export.modules():
            if self.is_quant_layer(m) and not m.weight_quantizer._disabled and m.weight_quantizer.num_bits < 8:
                self._widen_weight_quantizer(m)
        # The package reads this class attribute at forward time; it is restored on exit.
        previous = pq_nn.TensorQuantizer.use_fb_fake_quant
        pq_nn.TensorQuantizer.use_fb_fake_quant = True
        try:
            with _quiet_absl():
                yield export
        finally:
            pq_nn.TensorQuantizer.use_fb_fake_quant = previous

    @staticmethod
    def _widen_weight_quantizer(layer: nn.Module) -> None:
        q = layer.weight_quantizer
        with torch.no_grad():
            layer.weight.copy_(q(layer.weight))  # snap to the k-bit grid
        bound = 2.0 ** (q.num_bits - 1) - 1
        _set_amax(q, q.amax * (127.0 / bound))
        q.num_bits = 8
