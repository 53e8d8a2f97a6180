"""What the two NVIDIA backends share: calibration, reload and weight ranges over a ``TensorQuantizer``.

pytorch-quantization 2.1.3 and its successor nvidia-modelopt 0.47.0 have the same quantizer model:
a ``TensorQuantizer`` module with ``enable``/``disable``, ``enable_quant``/``disable_quant``, a
calibrator (max or histogram) switched on for statistics, an ``amax`` buffer, and quantized layers
holding ``input_quantizer`` and ``weight_quantizer``. This base class drives them through the engine's
:class:`~qarep_dense.quant.backends.QuantBackend` steps once; a subclass says how to build its layers
and quantizers, how to stop its calibrator, how to set an amax, and how to export.
"""
from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from typing import Iterator

import torch
from torch import nn

from .histogram import MIN_AMAX, histogram_amax, use_bounded_collect

log = logging.getLogger(__name__)


class TensorQuantizerBackend:
    """Calibration, reload and weight amax of a backend whose quantizers are ``quantizer_types``."""

    name: str = ""
    quantizer_types: tuple[type, ...] = ()
    layer_types: tuple[type, ...] = ()
    max_calibrator_types: tuple[type, ...] = ()
    histogram_calibrator_types: tuple[type, ...] = ()

    def set_bins(self, quantizer: nn.Module, num_bins: int) -> None:
        """A histogram quantizer's starting bins, and the bounded collect of :mod:`.histogram` for its growth."""
        if isinstance(quantizer._calibrator, self.histogram_calibrator_types):
            use_bounded_collect(quantizer._calibrator, num_bins)

    # --- hooks a subclass may change ---------------------------------------------------------
    def quiet(self) -> AbstractContextManager:
        """Context that mutes the library's per-quantizer logging while many states change."""
        return nullcontext()

    def stop_calibration(self, quantizer: nn.Module) -> None:
        quantizer.disable_calib()

    def idle_quantizers(self, layer: nn.Module) -> list[nn.Module]:
        """Quantizers of a quantized layer the engine never uses (kept disabled)."""
        return []

    @staticmethod
    def set_amax(quantizer: nn.Module, amax: torch.Tensor) -> None:
        """Set (or replace, also with a new shape) the ``_amax`` buffer, kept >= MIN_AMAX."""
        amax = amax.detach().float().clamp_min(MIN_AMAX)
        if "_amax" in quantizer._buffers:
            quantizer._amax = amax
        else:
            quantizer.register_buffer("_amax", amax)

    # --- queries -------------------------------------------------------------------------------
    def is_quantizer(self, module: nn.Module) -> bool:
        return isinstance(module, self.quantizer_types)

    def is_quant_layer(self, module: nn.Module) -> bool:
        return isinstance(module, self.layer_types)

    def layer_quantizers(self, layer: nn.Module) -> dict[str, nn.Module]:
        return {"input": layer.input_quantizer, "weight": layer.weight_quantizer}

    def amax(self, quantizer: nn.Module) -> torch.Tensor | None:
        return quantizer.amax

    def set_enabled(self, quantizer: nn.Module, enabled: bool) -> None:
        quantizer.enable() if enabled else quantizer.disable()

    def _weight_quantizer_ids(self, model: nn.Module) -> set[int]:
        return {id(m.weight_quantizer) for m in model.modules() if self.is_quant_layer(m)}

    def _idle_quantizer_ids(self, model: nn.Module) -> set[int]:
        return {id(q) for m in model.modules() if self.is_quant_layer(m) for q in self.idle_quantizers(m)}

    def _act_quantizers(self, model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
        skip = self._weight_quantizer_ids(model) | self._idle_quantizer_ids(model)
        for name, m in model.named_modules():
            if self.is_quantizer(m) and id(m) not in skip:
                yield name, m

    # --- calibration ---------------------------------------------------------------------------
    def begin_calibration(self, model: nn.Module) -> None:
        off = self._weight_quantizer_ids(model) | self._idle_quantizer_ids(model)
        with self.quiet():
            for m in model.modules():
                if not self.is_quantizer(m):
                    continue
                if id(m) in off:
                    m.disable()  # weights are calibrated from the tensors themselves
                    continue
                m._calibrator.reset()
                m.enable()
                m.disable_quant()
                m.enable_calib()

    def end_calibration(self, model: nn.Module, calibrator: str, percentile: float, start_bin: int,
                        stride: int) -> dict[str, float]:
        amaxes: dict[str, float] = {}
        with self.quiet():
            for name, q in self._act_quantizers(model):
                self.stop_calibration(q)
                amax = self._compute_amax(q, calibrator, percentile, start_bin, stride)
                if amax is None:
                    log.warning("quantizer %s saw no calibration data; it is left disabled (float)", name)
                    q.disable()
                    continue
                self.set_amax(q, amax)
                q.enable_quant()
                amaxes[name] = float(q.amax)
            for m in model.modules():
                if self.is_quant_layer(m):
                    m.weight_quantizer.enable()
                    m.weight_quantizer.enable_quant()
        self.refresh_weight_amax(model)
        return amaxes

    def _compute_amax(self, q: nn.Module, calibrator: str, percentile: float, start_bin: int,
                      stride: int) -> torch.Tensor | None:
        cal = q._calibrator
        if isinstance(cal, self.max_calibrator_types):
            return cal.compute_amax()
        return histogram_amax(cal, calibrator, q.num_bits, q.unsigned, percentile, start_bin, stride)

    def load_calibrated(self, model: nn.Module, state: dict) -> None:
        """Load ``state`` (a calibrated model's state dict) into the uncalibrated fake-quant ``model`` of the
        same structure, and put every quantizer in the mode calibration left it in: quantizing with the saved
        amax, or off (float) where the state holds none (a quantizer that saw no calibration data)."""
        weights, idle = self._weight_quantizer_ids(model), self._idle_quantizer_ids(model)
        with self.quiet():
            for name, q in model.named_modules():
                if not self.is_quantizer(q) or id(q) in idle:
                    continue
                amax = state.get(f"{name}._amax")
                self.stop_calibration(q)
                if amax is None and id(q) not in weights:
                    q.disable()
                    continue
                if amax is not None:
                    self.set_amax(q, amax)  # the buffer must exist before loading
                q.enable()
                q.enable_quant()
            model.load_state_dict(state, strict=True)
        self.refresh_weight_amax(model)

    def refresh_weight_amax(self, model: nn.Module) -> None:
        for m in model.modules():
            if self.is_quant_layer(m):
                axis = self.weight_axis(m)
                w = m.weight.detach()
                dims = [d for d in range(w.dim()) if d != axis]
                self.set_amax(m.weight_quantizer, w.abs().amax(dim=dims, keepdim=True))

    @staticmethod
    def weight_axis(layer: nn.Module) -> int:
        # ConvTranspose weights are (C_in, C_out/groups, kH, kW): output channels sit on axis 1.
        return 1 if isinstance(layer, nn.modules.conv._ConvTransposeNd) else 0

    # --- export --------------------------------------------------------------------------------
    def check_exportable(self, model: nn.Module) -> None:
        """Raise unless every enabled quantizer has an amax and every activation quantizer is 8-bit."""
        weights = self._weight_quantizer_ids(model)
        for name, q in model.named_modules():
            if not self.is_quantizer(q) or q._disabled:
                continue
            if q.amax is None:
                raise RuntimeError(f"cannot export {name}: it has no amax (calibrate the model first)")
            if id(q) not in weights and q.num_bits != 8:
                raise ValueError(f"cannot export {name}: ONNX QDQ needs 8-bit activations, got {q.num_bits}")

    def widen_weight_quantizers(self, model: nn.Module) -> None:
        """Re-express every weight quantizer of fewer than 8 bits exactly as an 8-bit one (ONNX has only
        8-bit QDQ here): the weights are snapped to their k-bit grid and the quantizer gets the same step
        (amax * 127 / (2**(k-1) - 1)); every snapped value is on the 8-bit grid and in range."""
        for layer in model.modules():
            if not self.is_quant_layer(layer):
                continue
            q = layer.weight_quantizer
            if q._disabled or q.num_bits >= 8:
                continue
            with torch.no_grad():
                layer.weight.copy_(q(layer.weight))  # snap to the k-bit grid
            bound = 2.0 ** (q.num_bits - 1) - 1
            self.set_amax(q, q.amax * (127.0 / bound))
            q.num_bits = 8
