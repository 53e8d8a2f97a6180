"""Module swap: a rule table keyed by module type turns a fused float model into a fake-quant one.

Rules go by (exact) module type, never by module path, so the same table quantizes classifiers,
detectors and segmenters. Conv/Linear layers become the backend's quantized layers; ops whose
inputs a quantizer must see are small explicit modules (``Concat``, ``nn.Upsample``, pools) and get
wrapped here. Exact types are matched so a wrapper or a backend layer is never wrapped twice.

:func:`add_output_quantizers` then follows the data flow of one forward pass and gives every conv
whose output is not read by exactly one quantizer an output quantizer of its own (TensorRT-style
int8 conv outputs), so that each conv is ``DQ -> Conv -> Q`` in the exported graph.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..layers.graph_ops import Concat
from .backends import QuantBackend
from .config import QuantConfig

log = logging.getLogger(__name__)

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
    """{module name: its quantizers} for every quantized layer and wrapper (the units of sensitivity).

    A wrapper around a quantized layer (a conv given an output quantizer) is ONE unit under the
    wrapper's name, which is the layer's own name in the float model: a ranking can be fed back
    as ``skip_layers``.
    """
    units: dict[str, list[nn.Module]] = {}
    inner: set[str] = set()
    for name, m in model.named_modules():
        if name in inner:
            continue
        if isinstance(m, QUANT_WRAPPERS):
            units[name] = [q for q in m.children() if backend.is_quantizer(q)]
            wrapped, path = getattr(m, "module", None), f"{name}.module"
            while isinstance(wrapped, QUANT_WRAPPERS) or (wrapped is not None and backend.is_quant_layer(wrapped)):
                if backend.is_quant_layer(wrapped):
                    units[name] += list(backend.layer_quantizers(wrapped).values())
                else:
                    units[name] += [q for q in wrapped.children() if backend.is_quantizer(q)]
                inner.add(path)
                wrapped, path = getattr(wrapped, "module", None), f"{path}.module"
        elif backend.is_quant_layer(m):
            units[name] = list(backend.layer_quantizers(m).values())
    return units


def quantized_convs(model: nn.Module, backend: QuantBackend) -> int:
    """How many (non-transposed) convolutions of ``model`` are quantized layers with a calibrated input
    quantizer: 0 means the fake-quant model is not an INT8 model of its convs, whatever else it quantizes."""
    count = 0
    for m in model.modules():
        if backend.is_quant_layer(m) and m.weight.dim() > 2 and not getattr(m, "transposed", False):
            count += backend.amax(backend.layer_quantizers(m)["input"]) is not None
    return count


def set_quantizers_enabled(model: nn.Module, backend: QuantBackend, enabled: bool) -> None:
    """Switch every calibrated quantizer in ``model`` on or off (off = exact float model).

    Quantizers without an amax (they saw no calibration data) stay off either way.
    """
    for m in model.modules():
        if backend.is_quantizer(m):
            backend.set_enabled(m, enabled and backend.amax(m) is not None)


# --- output quantizers for convs (data flow of one forward pass) --------------------------------

# Modules a conv's output may pass through and still be "the conv's output": ReLU and Identity
# commute exactly with symmetric quantization (the ORT export moves Q/DQ in front of the ReLU);
# BatchNorm is the post-BN kept unfolded for QAT (folded into the conv afterwards).
TRANSPARENT_TYPES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.Identity, nn.BatchNorm2d)
# Tensor calls that read metadata, not values: they do not make a float consumer.
_METADATA_CALLS = frozenset({"shape", "dtype", "device", "ndim", "layout", "requires_grad", "is_cuda",
                             "grad_fn", "size", "dim", "numel", "nelement", "ndimension", "is_floating_point",
                             "is_contiguous", "__len__", "element_size", "data_ptr", "get_device", "stride"})


@dataclass(eq=False)
class _FlowNode:
    """One tensor derived from a conv output; ``uses`` lists who read it:
    ("next", node) a transparent module, ("quant", id) a quantizer, ("module", name, sole_input)
    a leaf module, ("op", func name) a functional op, ("output",) the model output."""

    conv: str
    producer: str
    uses: list[tuple] = field(default_factory=list)


def _call_name(func: Any) -> str:
    name = getattr(func, "__name__", "")
    if name == "__get__":  # a property getter: name the property (x.shape -> "shape")
        return getattr(getattr(func, "__self__", None), "__name__", name)
    return name


class _ConvFlowTracer(TorchFunctionMode):
    """Forward-pass bookkeeping of where each conv output goes.

    Module hooks tag conv outputs and follow them through transparent modules; quantizer outputs
    are cloned so whatever reads them is not mistaken for a reader of the conv output; any other
    torch call on a tagged tensor (outside quantizers, transparent and leaf modules) is a float use.
    """

    def __init__(self, backend: QuantBackend):
        super().__init__()
        self.backend = backend
        self.tags: dict[int, tuple[torch.Tensor, _FlowNode]] = {}  # keeps tensors alive: ids stay unique
        self.roots: list[_FlowNode] = []
        self.frames: list[tuple[bool, _FlowNode | None, bool]] = []  # (muted, transparent input, leaf use)
        self.muted = 0

    def tagged(self, obj: Any) -> Iterator[_FlowNode]:
        if isinstance(obj, torch.Tensor):
            entry = self.tags.get(id(obj))
            if entry is not None and entry[0] is obj:
                yield entry[1]
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                yield from self.tagged(item)
        elif isinstance(obj, dict):
            for item in obj.values():
                yield from self.tagged(item)

    def _tag(self, tensor: torch.Tensor, node: _FlowNode) -> None:
        self.tags[id(tensor)] = (tensor, node)

    def _untag(self, out: Any) -> None:
        """An in-place op or module (``SiLU(inplace=True)``) returns its input object with new values."""
        if isinstance(out, torch.Tensor) and next(self.tagged(out), None) is not None:
            del self.tags[id(out)]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        used = False
        if not self.muted and _call_name(func) not in _METADATA_CALLS:
            for node in self.tagged((args, kwargs)):
                node.uses.append(("op", _call_name(func)))
                used = True
        out = func(*args, **kwargs)
        if used:
            self._untag(out)
        return out

    def pre_hook(self, name: str, module: nn.Module, args: tuple) -> None:
        mute, node, used = False, None, False
        tagged = [] if self.muted else list(self.tagged(args))
        if self.muted:
            pass
        elif self.backend.is_quantizer(module):
            for n in tagged:
                n.uses.append(("quant", id(module)))
            mute = True
        elif tagged and isinstance(module, TRANSPARENT_TYPES) and len(args) == 1:
            mute, node = True, tagged[0]
        elif tagged and next(module.children(), None) is None:  # a leaf module reads the conv output
            sole = len(args) == 1 and isinstance(args[0], torch.Tensor)
            for n in tagged:
                n.uses.append(("module", name, sole))
            mute = used = True
        self.frames.append((mute, node, used))
        self.muted += int(mute)

    def post_hook(self, name: str, module: nn.Module, args: tuple, output: Any) -> Any:
        mute, node, used = self.frames.pop()
        result = None
        if used:
            self._untag(output)
        elif isinstance(output, torch.Tensor):
            if self.backend.is_quantizer(module):
                result = output.clone()  # a disabled quantizer returns its input object itself
            elif self.backend.is_quant_layer(module) and module.weight.dim() > 2:  # convs, not Linear
                root = _FlowNode(name, name)
                self.roots.append(root)
                self._tag(output, root)
            elif node is not None:
                child = _FlowNode(node.conv, name)
                node.uses.append(("next", child))
                self._tag(output, child)
        self.muted -= int(mute)
        return result


def _placement(root: _FlowNode) -> tuple[str, str] | None:
    """Where a conv needs an output quantizer: ("output", module) quantizes that module's output,
    ("input", module) the input of the one leaf module reading the conv output (SiLU, max-pool);
    None when the (transparent-extended) output is read by exactly one quantizer and nothing else,
    or only returned by the model (a result the caller gets, not an input of another kernel)."""
    node = root
    while len(node.uses) == 1 and node.uses[0][0] == "next":
        node = node.uses[0][1]
    uses = [u for u in node.uses if u[0] != "output"]
    if not uses or (all(u[0] == "quant" for u in uses) and len({u[1] for u in uses}) == 1):
        return None
    if len(uses) == 1 and uses[0][0] == "module" and uses[0][2]:
        return "input", uses[0][1]
    return "output", node.producer


def trace_conv_outputs(model: nn.Module, backend: QuantBackend, example_input: torch.Tensor) -> dict[str, str]:
    """{module name: "input" | "output"}: where each quantized conv of ``model`` needs an output quantizer.

    example_input: one preprocessed batch (N, 3, H, W) on the model's device. Runs one forward
    pass; call it before calibration (a calibrating quantizer would count this batch too).
    """
    tracer = _ConvFlowTracer(backend)
    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(partial(tracer.pre_hook, name)))
        handles.append(module.register_forward_hook(partial(tracer.post_hook, name)))
    try:
        with torch.no_grad(), tracer:
            out = model(example_input)
            for node in tracer.tagged(out):
                node.uses.append(("output",))
    finally:
        for handle in handles:
            handle.remove()
    plan: dict[str, str] = {}
    for root in tracer.roots:
        placed = _placement(root)
        if placed is not None:
            plan.setdefault(placed[1], placed[0])
    return plan


def add_output_quantizers(model: nn.Module, backend: QuantBackend, config: QuantConfig,
                          example_input: torch.Tensor) -> list[str]:
    """Give every quantized conv whose output is read inside the model by anything but exactly one
    quantizer an output quantizer, IN PLACE; returns the names of the wrapped modules.

    Why: onnxruntime forms an integer ``QLinearConv`` only from ``DQ -> Conv -> Q``. A conv followed
    by SiLU, a prediction conv feeding the model output, or a conv whose output fans out to
    quantizers of different scales (or to a float op such as a max-pool) has no such Q. The new
    quantizer sits after ReLU/Identity/BN (exact to move in front of a ReLU at export), and before
    any other activation, which it cannot commute with. A conv output the model returns as it is
    stays float (the model's result, like a classifier's float logits); the detector's prediction
    convs are reshaped and concatenated inside the model first, so they do get one. Classifiers
    (every conv read by one quantizer) get none. Modules in ``config.skip_layers`` are left alone.
    """
    plan = trace_conv_outputs(model, backend, example_input)
    wrapped = []
    for name, where in plan.items():
        if _is_skipped(name, config.skip_layers):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        module = getattr(parent, attr)
        wrapper = QuantInput if where == "input" else QuantOutput
        setattr(parent, attr, wrapper(module, _quantizer(backend, config)))
        wrapped.append(name)
    log.info("output quantizers added after %d convs", len(wrapped))
    return wrapped
