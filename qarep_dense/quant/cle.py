"""Cross-layer equalization (CLE, Nagel et al. 2019, "Data-free quantization") of a fused model.

Two convs with a ReLU between them, ``y = W2 * relu(W1 x + b1)``, compute the same function after
output channel i of conv1 (weights and bias) is divided by s_i and input channel i of conv2 is
multiplied by s_i, for any s_i > 0, because relu(a / s) = relu(a) / s (positive homogeneity; zero
padding stays zero). With r1_i the range of conv1's output channel i and r2_i the range of conv2's
input channel i, s_i = sqrt(r1_i / r2_i) makes both ranges sqrt(r1_i r2_i): a channel whose weights
set an outlier per-channel INT8 scale shares it with its neighbour layer. Ranges are max |w| (our
weight quantizer is symmetric, so max |w| is its range up to a factor 2 that cancels in the ratio).
Pairs along a chain conv1 -> conv2 -> conv3 share a conv, so the pairs are swept until the scales
settle (as the paper does). A grouped conv2 reads input channel i in group i // (C_in / groups)
only, so its range and its scaling are taken over that group's output channels. A channel whose
range is 0 on either side (a dead filter, or an input no weight reads) keeps s_i = 1: no NaN, no inf.
The chain may also run conv -> ReLU -> global average pool -> flatten -> Linear (the classifier
head): pooling and flattening are linear per channel, so the same rescaling stays exact.

Why not a library: ``torch.ao.quantization._equalize.cross_layer_equalization`` (private, torch 2.x)
takes the pairs from the caller (no graph search), uses max - min ranges, raises on a grouped conv2
(it compares ``weight2.size(1)``, C_in / groups, with C_out of conv1), divides by ``range2 + 1e-9``
(a dead input gives a 1e4+ scale, a dead filter gives a scale of 0 and then inf / NaN) and
changes the modules in place. pytorch-quantization has no CLE; AIMET has one but is not in our
stack (and only for its own model preparer). So the rule is written here, on ``nn.Conv2d`` /
``nn.Linear`` pairs found by tracing the model (or its children) with ``torch.fx``.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field

import torch
from torch import fx, nn

log = logging.getLogger(__name__)

_RELU_FUNCTIONS = (torch.relu, torch.nn.functional.relu, torch.relu_)
_PASS_THROUGH_FUNCTIONS = (torch.flatten,)


@dataclass
class CLEPair:
    """conv1 -> ReLU -> conv2 (``through``: the per-channel linear ops between the ReLU and conv2)."""

    conv1: str
    conv2: str
    channels: int
    through: list[str] = field(default_factory=list)
    rescaled: int = 0  # channels whose total scale (over all sweeps) differs from 1
    fixed: int = 0     # channels left at scale 1 because a range was 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CLEReport:
    """What :func:`equalize` did: the pairs, the sweeps, and the channel-range spread before/after.

    spread_before / spread_after: over all pairs, the mean of max/mean of the per-channel ranges of
    conv1's outputs (what sets its per-channel INT8 scales), before and after.
    """

    pairs: list[CLEPair] = field(default_factory=list)
    sweeps: int = 0
    converged: bool = True
    spread_before: float = 1.0
    spread_after: float = 1.0
    skipped: str | None = None  # why nothing was equalized
    untraced: list[str] = field(default_factory=list)  # leaf modules torch.fx could not trace (not searched)

    def as_dict(self) -> dict:
        return {**asdict(self), "pairs": [p.as_dict() for p in self.pairs]}


# --- finding the pairs --------------------------------------------------------------------------

def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules[node.target]) is nn.ReLU
    return node.op in ("call_function", "call_method") and (node.target in _RELU_FUNCTIONS or node.target == "relu")


def _is_pass_through(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Per-channel linear ops that may sit between the ReLU and a Linear: global average pool, flatten."""
    if node.op == "call_module":
        mod = modules[node.target]
        return isinstance(mod, nn.AdaptiveAvgPool2d) and mod.output_size in (1, (1, 1)) or isinstance(mod, nn.Flatten)
    if node.op == "call_function" and node.target in _PASS_THROUGH_FUNCTIONS:
        return node.args[1:] == (1,) and not node.kwargs
    return node.op == "call_method" and node.target == "flatten" and node.args[1:] == (1,) and not node.kwargs


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _follow(start: fx.Node, modules: dict[str, nn.Module]) -> tuple[fx.Node | None, list[str]]:
    """From a conv node: the conv/linear node reached through exactly one ReLU (and, for a Linear,
    pass-through ops), each intermediate value read by that one op only; None if there is none."""
    relu = _only_user(start)
    if relu is None or not _is_relu(relu, modules) or relu.args[0] is not start:
        return None, []
    node, through = _only_user(relu), []
    while node is not None and _is_pass_through(node, modules):
        through.append(str(node.target) if node.op == "call_module" else getattr(node.target, "__name__", str(node.target)))
        node = _only_user(node)
    if node is None or node.op != "call_module":
        return None, []
    target = modules[node.target]
    if type(target) is nn.Conv2d and not through:
        return node, through
    if type(target) is nn.Linear and through:
        return node, through
    return None, []


def _pairs_in_graph(module: nn.Module, prefix: str) -> list[tuple[str, str, list[str]]]:
    graph = fx.symbolic_trace(module).graph
    modules = dict(module.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op == "call_module" and type(modules.get(node.target)) is nn.Conv2d:
            nxt, through = _follow(node, modules)
            if nxt is not None:
                pairs.append((prefix + str(node.target), prefix + str(nxt.target), through))
    return pairs


def find_relu_pairs(model: nn.Module) -> tuple[list[tuple[str, str, list[str]]], list[str]]:
    """([(conv1, conv2, through)], [modules that did not trace]).

    Pairs: every Conv2d whose output goes only through one ReLU into one Conv2d (or, via global
    pooling/flatten, into one Linear). A module ``torch.fx`` cannot trace (a detector head with
    shape-dependent control flow) is searched child by child instead: a value inside a traced child
    that has one user there has one user, so the pairs found in a child are pairs of the whole model
    (chains that cross a child's boundary are missed, never wrongly paired).
    """
    pairs, untraced = [], []

    def visit(module: nn.Module, prefix: str) -> None:
        try:
            pairs.extend(_pairs_in_graph(module, prefix))
        except Exception:  # noqa: BLE001 - any trace failure: search the children instead
            children = list(module.named_children())
            if not children:
                untraced.append(prefix.rstrip(".") or type(module).__name__)
            for name, child in children:
                visit(child, f"{prefix}{name}.")

    visit(model, "")
    return pairs, untraced


# --- the rescaling ------------------------------------------------------------------------------

def _input_index(layer: nn.Module) -> torch.Tensor:
    """index[o, j]: the global input channel that weight column j of output row o reads (groups respected)."""
    if isinstance(layer, nn.Linear):
        return torch.arange(layer.in_features).expand(layer.out_features, -1)
    per_in, per_out = layer.in_channels // layer.groups, layer.out_channels // layer.groups
    group = torch.arange(layer.out_channels) // per_out
    return group[:, None] * per_in + torch.arange(per_in)[None, :]


def output_ranges(conv: nn.Module) -> torch.Tensor:
    """(C_out,) max |w| per output channel."""
    return conv.weight.detach().abs().flatten(1).amax(dim=1)


def input_ranges(layer: nn.Module) -> torch.Tensor:
    """(C_in,) max |w| over every weight that reads input channel c (over its group's outputs)."""
    w = layer.weight.detach().abs()
    m = w if w.dim() == 2 else w.amax(dim=(2, 3))
    index = _input_index(layer).to(m.device)
    out = torch.zeros(index.max() + 1, dtype=m.dtype, device=m.device)
    return out.scatter_reduce(0, index.flatten(), m.flatten(), reduce="amax")


def pair_scales(conv1: nn.Module, conv2: nn.Module) -> torch.Tensor:
    """s_i = sqrt(r1_i / r2_i); 1 where either range is 0 (or not finite)."""
    r1, r2 = output_ranges(conv1), input_ranges(conv2)
    ok = (r1 > 0) & (r2 > 0) & torch.isfinite(r1) & torch.isfinite(r2)
    return torch.where(ok, torch.sqrt(r1 / torch.where(ok, r2, torch.ones_like(r2))), torch.ones_like(r1))


@torch.no_grad()
def apply_scales(conv1: nn.Module, conv2: nn.Module, scales: torch.Tensor) -> None:
    """In place: conv1 output channel i (weight and bias) / s_i, conv2 input channel i * s_i."""
    s = scales.to(conv1.weight.dtype)
    conv1.weight.div_(s.view(-1, *([1] * (conv1.weight.dim() - 1))))
    if conv1.bias is not None:
        conv1.bias.div_(s)
    factor = s[_input_index(conv2).to(s.device)]
    conv2.weight.mul_(factor.view(*factor.shape, *([1] * (conv2.weight.dim() - 2))))


def _spread(convs: list[nn.Module]) -> float:
    """Mean over convs of max/mean of their per-output-channel ranges (1 = all channels alike)."""
    values = []
    for conv in convs:
        r = output_ranges(conv)
        if r.numel() and float(r.mean()) > 0:
            values.append(float(r.max() / r.mean()))
    return sum(values) / len(values) if values else 1.0


def equalize(model: nn.Module, max_sweeps: int = 50, tol: float = 1e-3) -> tuple[nn.Module, CLEReport]:
    """A copy of the fused ``model`` with every conv-ReLU-conv pair equalized; ``model`` is not changed.

    Sweeps the pairs until no scale differs from 1 by more than ``tol`` (or ``max_sweeps``).
    Parts of the model that ``torch.fx`` cannot trace are searched child by child (see :func:`find_relu_pairs`).
    """
    out = copy.deepcopy(model)
    found, untraced = find_relu_pairs(out)
    report = CLEReport(untraced=untraced)
    if not found:
        report.skipped = "no conv -> ReLU -> conv chain in the model" + (
            f" (not traceable: {', '.join(untraced[:4])})" if untraced else "")
        return out, report
    modules = dict(out.named_modules())
    pairs = [(modules[a], modules[b]) for a, b, _ in found]
    report.pairs = [CLEPair(a, b, modules[a].out_channels, through) for a, b, through in found]
    report.spread_before = _spread([c1 for c1, _ in pairs])
    report.converged = False
    totals = [torch.ones_like(output_ranges(c1)) for c1, _ in pairs]
    for sweep in range(1, max_sweeps + 1):
        worst = 0.0
        for k, (conv1, conv2) in enumerate(pairs):
            s = pair_scales(conv1, conv2)
            apply_scales(conv1, conv2, s)
            totals[k] = totals[k] * s
            worst = max(worst, float((s - 1).abs().max()))
        report.sweeps = sweep
        if worst <= tol:
            report.converged = True
            break
    for entry, total, (conv1, conv2) in zip(report.pairs, totals, pairs):
        entry.rescaled = int(((total - 1).abs() > 1e-6).sum())
        entry.fixed = int(((output_ranges(conv1) == 0) | (input_ranges(conv2) == 0)).sum())
    report.spread_after = _spread([c1 for c1, _ in pairs])
    log.info("CLE: %d conv pairs equalized in %d sweeps; per-channel range spread (max/mean) %.2f -> %.2f",
             len(pairs), report.sweeps, report.spread_before, report.spread_after)
    return out, report

