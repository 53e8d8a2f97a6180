"""Fake-quantization backends behind one small interface.

The engine (module swap, calibration, QAT, sensitivity, export) talks to a :class:`QuantBackend`
only; models never see it. A backend is imported on first use, so ``import qarep_dense`` (and
``import qarep_dense.quant``) loads no quantization library. Two are registered: NVIDIA's
pytorch-quantization 2.1.3 (the paper's toolkit, deprecated by NVIDIA) and its maintained successor
nvidia-modelopt; both share :class:`~.tensor_quantizer.TensorQuantizerBackend`.
"""
from __future__ import annotations

import importlib
from contextlib import AbstractContextManager
from typing import Iterator, Protocol, runtime_checkable

import torch
from torch import nn

# name -> "module:Class", imported lazily (no quantization library at package import).
_BACKENDS: dict[str, str] = {
    "pytorch_quantization": "qarep_dense.quant.backends.pytorch_quant:PytorchQuantizationBackend",
    "modelopt": "qarep_dense.quant.backends.modelopt:ModeloptBackend",
}
# name -> the package its quantizer modules come from (to tell a model's backend without importing it).
_PACKAGES: dict[str, str] = {"pytorch_quantization": "pytorch_quantization", "modelopt": "modelopt"}
_CACHE: dict[str, "QuantBackend"] = {}


@runtime_checkable
class QuantBackend(Protocol):
    """What the engine needs from a fake-quant library.

    Quantizers are ``nn.Module``s mapping a tensor to its fake-quantized copy (same shape).
    """

    name: str

    def quant_layer(self, layer: nn.Module, weight_bits: int, act_bits: int, calibrator: str,
                    num_bins: int) -> nn.Module:
        """Quantized copy of a Conv2d/ConvTranspose2d/Linear: same geometry (groups, dilation,
        padding, stride), weights and bias; weight quantizer per output channel, input per tensor."""
        ...

    def act_quantizer(self, act_bits: int, calibrator: str, num_bins: int) -> nn.Module:
        """A per-tensor activation quantizer (for concat/upsample/pool rules)."""
        ...

    def is_quantizer(self, module: nn.Module) -> bool: ...

    def is_quant_layer(self, module: nn.Module) -> bool:
        """True for modules made by :meth:`quant_layer`."""
        ...

    def layer_quantizers(self, layer: nn.Module) -> dict[str, nn.Module]:
        """{"input": q, "weight": q} of a quantized layer."""
        ...

    def begin_calibration(self, model: nn.Module) -> None:
        """Switch every activation quantizer to statistics collection (pass-through output)."""
        ...

    def load_calibrated(self, model: nn.Module, state: dict) -> None:
        """Load a calibrated model's state dict into an uncalibrated fake-quant model of the same
        structure, quantizers in the mode calibration left them in."""
        ...

    def end_calibration(self, model: nn.Module, calibrator: str, percentile: float, start_bin: int,
                        stride: int) -> dict[str, float]:
        """Compute and load every activation amax, set weight amax, switch quantization on.
        Returns {quantizer name: amax}."""
        ...

    def refresh_weight_amax(self, model: nn.Module) -> None:
        """Set each weight quantizer's per-channel amax to the current max |w| (after QAT steps or BN folding)."""
        ...

    def set_enabled(self, quantizer: nn.Module, enabled: bool) -> None: ...

    def amax(self, quantizer: nn.Module) -> torch.Tensor | None: ...

    def export_mode(self) -> AbstractContextManager:
        """Context in which ``torch.onnx.export`` writes QuantizeLinear/DequantizeLinear pairs."""
        ...


def backend_names() -> list[str]:
    """The registered backends' names (nothing is imported)."""
    return sorted(_BACKENDS)


def get_backend(name: str) -> QuantBackend:
    """The backend registered under ``name`` (imported on first use)."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown quantization backend {name!r}; expected one of {sorted(_BACKENDS)}")
    if name not in _CACHE:
        module_name, _, class_name = _BACKENDS[name].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ImportError(f"quantization backend {name!r} needs a package that is not installed: {err}. "
                              "Install the 'quant' extra (pip install .[quant]).") from err
        _CACHE[name] = getattr(module, class_name)()
    return _CACHE[name]


def backend_of(model: nn.Module, name: str | None = None) -> QuantBackend:
    """The backend named ``name``, or (None) the one whose quantizers ``model`` holds.

    Lets the steps after PTQ (export, QAT, BN folding) follow the backend a fake-quant model was built
    with, without every caller passing its name along. Raises for a model with no quantizer, or with
    quantizers of two backends.
    """
    if name is not None:
        return get_backend(name)
    found = {backend for m in model.modules() for backend, package in _PACKAGES.items()
             if type(m).__module__.split(".")[0] == package and type(m).__name__.endswith("TensorQuantizer")}
    if len(found) != 1:
        what = "no quantizer" if not found else f"quantizers of {sorted(found)}"
        raise ValueError(f"cannot tell the model's quantization backend: it has {what}; quantize it with "
                         "quantize_ptq first (or pass the backend's name)")
    return get_backend(found.pop())


def iter_quantizers(model: nn.Module, backend: QuantBackend) -> Iterator[tuple[str, nn.Module]]:
    """(name, quantizer) for every quantizer inside ``model``."""
    for name, module in model.named_modules():
        if backend.is_quantizer(module):
            yield name, module
