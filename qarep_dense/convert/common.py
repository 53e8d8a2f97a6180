"""Key renaming shared by every source layout, strict fitting onto our models, and state-dict files.

A source layout is a list of :class:`PathRule` (module paths of the source network -> ours) plus a
*block table* that renames the keys inside one 3x3 block (``rbr_dense.bn.weight`` ->
``branch_3x3.bn.weight``). Renaming never changes a value; only dtype is cast to the target's
(YOLOv6 releases are half precision; float16 -> float32 is exact).
"""
from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..engine.checkpoint import CheckpointError, checkpoint_path_problem, read_torch_file
from .unpickle import UnsafeFileError, is_module_record, read_pickled_checkpoint

BlockTable = tuple[tuple[str, str], ...]


class ConversionError(ValueError):
    """A source checkpoint cannot be mapped onto our model exactly; nothing is written."""


@dataclass(frozen=True)
class PathRule:
    """``pattern`` matches a whole source key, with a group ``rest`` for what follows the module path.

    ``target(match)`` gives our module path (ending in "."). ``block``: rename ``rest`` with the block table;
    otherwise ``rest`` is kept (plain conv / BN / linear modules already share PyTorch's names).
    """

    pattern: re.Pattern
    target: Callable[[re.Match], str]
    block: bool = False


def rule(pattern: str, target: str | Callable[[re.Match], str], block: bool = False) -> PathRule:
    """A :class:`PathRule` from a regex over the module path (``(?P<rest>.+)`` is appended)."""
    fn = target if callable(target) else (lambda m, t=target: t.format(**m.groupdict()))
    return PathRule(re.compile(pattern + r"(?P<rest>.+)"), fn, block)


# Inside one 3x3 block: source names -> ours, per block type. "rbr" is the naming of the official
# RepVGG code, which YOLOv6 kept (QARepVGG there: plain 1x1 conv, post-BN "bn").
RBR_BLOCKS: dict[str, BlockTable] = {
    "repvgg": (("rbr_dense.conv.", "branch_3x3.conv."), ("rbr_dense.bn.", "branch_3x3.bn."),
               ("rbr_1x1.conv.", "branch_1x1.conv."), ("rbr_1x1.bn.", "branch_1x1.bn."),
               ("rbr_identity.", "branch_identity.")),
    "qarepvgg": (("rbr_dense.conv.", "branch_3x3.conv."), ("rbr_dense.bn.", "branch_3x3.bn."),
                 ("rbr_1x1.weight", "branch_1x1.conv.weight"), ("bn.", "post_bn.")),
    "repopt": (("conv.", "conv."), ("bn.", "bn.")),
    "hs": (("conv.", "conv_3x3."), ("scale_conv.", "scale_3x3."), ("conv_1x1.", "conv_1x1."),
           ("scale_1x1.", "scale_1x1."), ("scale_identity.", "scale_identity."), ("bn.", "bn.")),
}
RBR_BLOCKS["qarepvgg_v2"] = RBR_BLOCKS["qarepvgg"]  # the avg-pool branch has no weights
# The official QARepVGG code's QARepVGGBlock: plain 3x3 and 1x1 convs (no BN, no bias), post-BN.
RBR_BLOCKS["qarepvgg_no_bn3x3_post_bn"] = (("rbr_dense.weight", "branch_3x3.conv.weight"),
                                           ("rbr_1x1.weight", "branch_1x1.conv.weight"), ("bn.", "post_bn."))
# Deploy forms: one conv (RepVGG; official QARepVGG, its post-BN folded in), or conv + the post-BN
# YOLOv6's QARepVGG keeps for QAT. Keyed by whether the file holds that post-BN.
RBR_FUSED: dict[bool, BlockTable] = {
    False: (("rbr_reparam.", "conv."),),
    True: (("rbr_reparam.", "conv."), ("bn.", "bn.")),
}


def rename_in_block(rest: str, table: BlockTable) -> str | None:
    """``rest`` renamed by the longest matching source prefix of ``table``; None if none matches."""
    best = max((src for src, _ in table if rest.startswith(src)), key=len, default=None)
    if best is None:
        return None
    return dict(table)[best] + rest[len(best):]


def rename_state(state: dict[str, torch.Tensor], rules: list[PathRule], table: BlockTable
                 ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(renamed state, source keys no rule maps). Two source keys landing on one target key is an error."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        new = None
        for r in rules:
            m = r.pattern.fullmatch(key)
            if m:
                rest = rename_in_block(m["rest"], table) if r.block else m["rest"]
                new = None if rest is None else r.target(m) + rest
                break
        if new is None:
            unmapped.append(key)
            continue
        if new in out:
            raise ConversionError(f"source keys {origin[new]!r} and {key!r} both map to {new!r}")
        out[new], origin[new] = value, key
    return out, unmapped


def _listing(label: str, keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")
    return f"{len(keys)} {label}: {shown}"


def fit_state(model: nn.Module, mapped: dict[str, torch.Tensor], unmapped: list[str], source: str
              ) -> dict[str, torch.Tensor]:
    """The state for ``model`` if ``mapped`` covers it exactly (same keys, same shapes); else raise.

    Never a partial load: any source key that did not map, any model key left without a value and
    any shape mismatch is listed in the error.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    mis_shaped = sorted(f"{k} {tuple(mapped[k].shape)} vs {tuple(own[k].shape)}"
                        for k in set(own) & set(mapped) if own[k].shape != mapped[k].shape)
    if unmapped or missing or unexpected or mis_shaped:
        parts = [_listing(label, keys) for label, keys in
                 (("source keys that did not map", sorted(unmapped)), ("model keys without a value", missing),
                  ("mapped keys the model does not have", unexpected), ("shape mismatches", mis_shaped)) if keys]
        raise ConversionError(f"{source}: layout does not match {type(model).__name__} exactly; nothing written. "
                              + "; ".join(parts))
    return {k: mapped[k].detach().to(own[k].dtype).clone() for k in own}


# --- reading state dicts -----------------------------------------------------------------------

_NESTED = ("state_dict", "model", "module", "net", "params")


def _is_tensor_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _read_with_objects(path: Path) -> object:
    """A torch zip file that pickles Python objects next to its tensors, read without running them.

    Training checkpoints often do: the official QARepVGG / DeiT-style ``main.py`` saves its argparse
    ``args`` next to ``model``. The restricted unpickler turns such objects into inert records. A pickled
    whole model (a YOLOv6 release file) is refused here: its tensors are not a state dict.
    """
    try:
        obj = read_pickled_checkpoint(path)
    except UnsafeFileError as err:
        raise ConversionError(f"{path}: cannot read checkpoint: {err}") from err
    if is_module_record(obj) or (isinstance(obj, dict) and any(is_module_record(v) for v in obj.values())):
        raise ConversionError(f"{path}: not a state dict (it pickles a whole model); for a YOLOv6 release file "
                              "use --from yolov6")
    return obj


def load_state_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A ``{key: tensor}`` state dict from ``.safetensors`` or a torch file (``weights_only=True``; a file
    that also pickles other Python objects is read by the restricted unpickler, nothing executed).

    Accepts the dict itself or one nested under "state_dict" / "model" / ...; strips DDP's "module.".
    """
    path = Path(path)
    problem = checkpoint_path_problem(path)
    if problem:
        raise ConversionError(problem)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: object = load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise ConversionError(f"{path}: cannot read safetensors file: {err}") from err
    else:
        try:
            obj = read_torch_file(path)
        except CheckpointError as err:
            if not zipfile.is_zipfile(path) or "refused as unsafe" not in str(err):
                raise ConversionError(str(err)) from None
            obj = _read_with_objects(path)  # a zip archive that also pickles objects: read them inert
    if not _is_tensor_dict(obj) and isinstance(obj, dict):
        obj = next((obj[k] for k in _NESTED if _is_tensor_dict(obj.get(k))), obj)
    if not _is_tensor_dict(obj):
        raise ConversionError(f"{path}: no state dict of tensors found (looked at the top level and under "
                              f"{', '.join(_NESTED)})")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def has_part(state: dict[str, torch.Tensor], part: str) -> bool:
    """True if some key contains ``part`` as a whole dotted component sequence (".bn." in "a.bn.weight")."""
    return any(f".{part}." in f".{k}" or k.startswith(f"{part}.") for k in state)
