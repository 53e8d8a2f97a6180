"""Module swap: a rule table keyed by module type turns a fused float model into a fake-quant one.

Rules go by (exact) module type, never by module path, so the same table quantizes classifiers,
detectors and segmenters. Conv/Linear layers become the backend's quantized layers; ops whose
inputs a quantizer must see are small explicit modules (``Concat``, ``nn.Upsample``, pools) and get
wrapped here. Exact types are matched so a wrapper or a backend layer is never wrapped twice.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..layers.graph_ops import Concat
from .backends import QuantBackend
from .config import QuantConfig


class QuantConcat(Concat):
    """``Concat`` whose inputs all pass through ONE quantizer: TensorRT needs a shared scale across
    the inputs of a concat, and calibrating one quantizer on every input gives exactly that."""

    def __init__(self, dim: int, quantizer: nn.Module):
        super().__init__(dim)
        self.input_quantizer = quantizer

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.input_quantizer(x) for x in xs], self.dim)


class QuantOutput(nn.Module):
    """Quantize a module's output (used for ``nn.Upsample``, whose output feeds later layers)."""

    def __init__(self, module: nn.Module, quantizer: nn.Module):
        super().__init__()
        self.module = module
        self.output_quantizer = quantizer

    def forward(self, *args, **kwargs):
        return self.output_quantizer(self.module(*args, **kwargs))


class QuantInput(nn.Module):
    """Quantize a module's single input (pools: the tensor they read becomes an integer tensor)."""

    def __init__(self, module: nn.Module, quantizer: nn.Module):
        super().__init__()
        self.module = module
        self.input_quantizer = quantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(self.input_quantizer(x))


QUANT_WRAPPERS = (QuantConcat, QuantOutput, QuantInput)
Rule = Callable[[nn.Module, QuantBackend, QuantConfig], nn.Module]


def _layer_rule(module: nn.Module, backend: QuantBackend, config: QuantConfig) -> nn.Module:
    return backend.quant_layer(module, config.weight_bits, config.act_bits, config.calibrator, config.num_bins)


def _quantizer(backend: QuantBackend, config: QuantConfig) -> nn.Module:
    return backend.act_quantizer(config.act_bits, config.calibrator, config.num_bins)


def _concat_rule(module: nn.Module, backend: QuantBackend, config: QuantConfig) -> nn.Module:
    return QuantConcat(module.dim, _quantizer(backend, config))


def _upsample_rule(module: nn.Module, backend: QuantBackend, config: QuantConfig) -> nn.Module:
    return QuantOutput(module, _quantizer(backend, config))


def _pool_rule(module: nn.Module, backend: QuantBackend, config: QuantConfig) -> nn.Module:
    return QuantInput(module, _quantizer(backend, config)) if config.quantize_pooling else module


QUANT_RULES: dict[type[nn.Module], Rule] = {
    nn.Conv2d: _layer_rule,
    nn.ConvTranspose2d: _layer_rule,
    nn.Linear: _layer_rule,
    Concat: _concat_rule,
    nn.Upsample: _upsample_rule,
    nn.AdaptiveAvgPool2d: _pool_rule,
    nn.AvgPool2d: _pool_rule,
}


def _is_skipped(name: str, skip: tuple[str, ...]) -> bool:
    return any(name == s or name.startswith(s + ".") for s in skip)


def check_skip_layers(model: nn.Module, skip_layers: tuple[str, ...]) -> None:
    """Raise if a name in ``skip_layers`` is not a module of ``model``."""
    names = {name for name, _ in model.named_modules()}
    unknown = [s for s in skip_layers if s not in names]
    if unknown:
        sample = ", ".join(sorted(n for n in names if n)[:8])
        raise ValueError(f"QuantConfig.skip_layers: no module named {unknown} in the model (names look like: {sample}, ...)")


def quantize_modules(model: nn.Module, backend: QuantBackend, config: QuantConfig,
                     rules: dict[type[nn.Module], Rule] | None = None) -> list[str]:
    """Apply ``rules`` (default ``QUANT_RULES``) in place; returns the names of the replaced modules.

    Modules named in ``config.skip_layers`` (and everything below them) stay float.
    """
    rules = QUANT_RULES if rules is None else rules
    check_skip_layers(model, config.skip_layers)
    replaced: list[str] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if _is_skipped(full, config.skip_layers):
                continue
            rule = rules.get(type(child))
            if rule is None:
                walk(child, full + ".")
                continue
            new = rule(child, backend, config)
            if new is not child:
                setattr(module, name, new)
                replaced.append(full)

    walk(model, "")
    return replaced


def quant_units(model: nn.Module, backend: QuantBackend) -> dict[str, list[nn.Module]]:
    """{module name: its quantizers} for every quantized layer and wrapper (the units of sensitivity)."""
    units: dict[str, list[nn.Module]] = {}
    for name, m in model.named_modules():
        if backend.is_quant_layer(m):
            units[name] = list(backend.layer_quantizers(m).values())
        elif isinstance(m, QUANT_WRAPPERS):
            units[name] = [q for q in m.children() if backend.is_quantizer(q)]
    return units


def set_quantizers_enabled(model: nn.Module, backend: QuantBackend, enabled: bool) -> None:
    """Switch every calibrated quantizer in ``model`` on or off (off = exact float model).

    Quantizers without an amax (they saw no calibration data) stay off either way.
    """
    for m in model.modules():
        if backend.is_quantizer(m):
            backend.set_enabled(m, enabled and backend.amax(m) is not None)
