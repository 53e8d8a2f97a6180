"""The one ONNX export and the one onnxruntime session of the project, and the INT8 kernel choice.

Every float or QDQ export goes through :func:`export_graph` (input "input" (N, 3, H, W), outputs
"output" or "output_i", dynamic batch) and every ORT session through :func:`make_session`, so
the graph names, the exporter (TorchScript, ``dynamo=False``: the dynamo exporter drops QDQ) and
the session options are the same everywhere.

INT8 kernels on x86: ORT's default U8S8 kernels add pairs of u8*s8 products in 16 bits on CPUs
without VNNI and saturate with full-range int8 weights (measured: 8 % output error on a tiny
model); ``session.x64quantprecision`` selects the exact U8U8 kernels, which run near FP32 speed.
With AVX512-VNNI, AVX-VNNI or AMX the default kernels accumulate in 32 bits, are exact and are
2-3x faster than FP32. :func:`choose_int8_kernels` picks per machine and can check the choice
against fake quantization on a calibration batch.
"""
from __future__ import annotations

import logging
import platform
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..choices import ORT_KERNEL_MODES

log = logging.getLogger(__name__)
# CPU flags (as /proc/cpuinfo spells them) whose int8 dot products accumulate in 32 bits.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
_X86 = {"x86_64", "amd64", "i386", "i686", "x86"}
# Default kernels "agree" with fake quant when their relative output error is at most this much
# above the exact kernels' own (the exact kernels differ from fake quant by rounding only).
AGREE_FACTOR, AGREE_SLACK = 1.5, 2e-3


def output_names(n: int) -> list[str]:
    """ONNX output names: "output" for one output, else "output_0", "output_1", ..."""
    return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]


def _flat(outputs: Any) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        return [t for v in outputs.values() for t in _flat(v)]
    return [t for v in outputs for t in _flat(v)]


@torch.no_grad()
def export_graph(model: nn.Module, example: torch.Tensor, path: str | Path, opset: int = 13,
                 dynamic_batch: bool = True, quiet: bool = False, dynamic_hw: bool = False) -> Path:
    """``torch.onnx.export`` of ``model`` (already in the mode to export) on ``example`` (N, 3, H, W).

    dynamic_batch / dynamic_hw: leave the batch / the input's height and width free (a segmentor
    run on images of any size). quiet: hide tracer warnings (the fake quantizers' ``.item()`` calls
    raise dozens). Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = output_names(len(_flat(model(example))))
    axes = None
    if dynamic_batch or dynamic_hw:
        axes = {name: {0: "batch"} if dynamic_batch else {} for name in ["input", *names]}
        if dynamic_hw:
            axes["input"].update({2: "height", 3: "width"})
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")
        # Constant folding leaves QuantizeLinear/DequantizeLinear alone, so QDQ weights stay int8 initializers.
        torch.onnx.export(model, (example,), str(path), opset_version=opset, dynamo=False, do_constant_folding=True,
                          input_names=["input"], output_names=names, dynamic_axes=axes)
    return path


def make_session(onnx_path: str | Path, threads: int = 2, opt_level: str = "all",
                 optimized_path: str | Path | None = None, precise_int8: bool = True) -> Any:
    """An onnxruntime CPU session.

    opt_level: "disable", "basic", "extended" (the QDQ -> integer-kernel fusions) or "all" (adds
    hardware-specific layouts). optimized_path: save the optimized graph ORT will run there.
    precise_int8: the exact U8U8 kernels (``session.x64quantprecision``; see the module doc).
    """
    import onnxruntime as ort  # lazy: deployment-only dependency

    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if opt_level not in levels:
        raise ValueError(f"make_session: opt_level must be one of {sorted(levels)}, got {opt_level!r}")
    if not Path(onnx_path).is_file():
        raise FileNotFoundError(f"make_session: {onnx_path} does not exist")
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[opt_level]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # hide the "hardware-specific optimized model" notice
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    if precise_int8:
        options.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def run_session(session: Any, x: torch.Tensor | np.ndarray) -> list[np.ndarray]:
    """Outputs of ``session`` on a float batch (N, 3, H, W)."""
    array = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float32)
    return session.run(None, {"input": array})


class OrtModule(nn.Module):
    """An onnxruntime session behind ``nn.Module``, so evaluators score an ONNX model like a torch one.

    forward(x: (N, 3, H, W) float) -> tensor (or tuple of tensors) on x's device.
    """

    def __init__(self, onnx_path: str | Path, threads: int = 2, precise_int8: bool = True):
        super().__init__()
        self.onnx_path = str(onnx_path)
        self.precise_int8 = precise_int8
        self.session = make_session(onnx_path, threads, precise_int8=precise_int8)

    def forward(self, x: torch.Tensor):
        tensors = tuple(torch.from_numpy(o).to(x.device) for o in run_session(self.session, x))
        return tensors[0] if len(tensors) == 1 else tensors


# --- INT8 kernel choice ------------------------------------------------------------------------------


def cpu_int8_features(cpuinfo: str | Path = "/proc/cpuinfo", machine: str | None = None) -> dict:
    """{"machine", "x86", "vnni_flags": [...], "vnni": bool} of this CPU (or of a given cpuinfo file).

    On non-x86 machines (ARM: sdot/udot are exact) the flags are not read.
    """
    machine = (machine or platform.machine()).lower()
    x86 = machine in _X86
    flags: set[str] = set()
    if x86 and Path(cpuinfo).is_file():
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                flags.update(line.partition(":")[2].split())
                break
    found = [f for f in VNNI_FLAGS if f in flags]
    return {"machine": machine, "x86": x86, "vnni_flags": found, "vnni": bool(found)}


@dataclass
class KernelChoice:
    """Which INT8 kernels ORT runs: "default" (U8S8, fast) or "precise" (U8U8, exact), and why.

    default_rel_error / precise_rel_error: ||ORT - fake quant|| / ||fake quant|| on the check batch
    (None when no check ran).
    """

    kernels: str
    reason: str
    features: dict
    default_rel_error: float | None = None
    precise_rel_error: float | None = None

    @property
    def precise(self) -> bool:
        return self.kernels == "precise"

    def as_dict(self) -> dict:
        return asdict(self)


def relative_error(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """||a - b|| / ||b|| over all outputs (0 when both are zero)."""
    if len(outputs) != len(reference):
        raise ValueError(f"relative_error: {len(outputs)} outputs vs {len(reference)} reference outputs")
    num = sum(float(((a.astype(np.float64) - b) ** 2).sum()) for a, b in zip(outputs, reference))
    den = sum(float((b.astype(np.float64) ** 2).sum()) for b in reference)
    return (num / den) ** 0.5 if den > 0 else (0.0 if num == 0 else float("inf"))


def kernels_agree(default_error: float, precise_error: float) -> bool:
    """True when the default kernels are no worse than rounding (the exact kernels' error) allows."""
    return default_error <= AGREE_FACTOR * precise_error + AGREE_SLACK


def _check_errors(onnx_path: str | Path, inputs: torch.Tensor | np.ndarray, reference: Any,
                  threads: int) -> tuple[float, float]:
    ref = [t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
           for t in _flat(reference)]
    errors = [relative_error(run_session(make_session(onnx_path, threads, precise_int8=p), inputs), ref)
              for p in (False, True)]
    return errors[0], errors[1]


def choose_int8_kernels(onnx_path: str | Path, inputs: torch.Tensor | np.ndarray | None = None,
                        reference: Any = None, mode: str = "auto", threads: int = 2,
                        features: dict | None = None) -> KernelChoice:
    """Pick ORT's INT8 kernels for this machine.

    mode "default"/"precise" forces them. "auto": on x86 without VNNI/AMX the precise kernels;
    otherwise the default ones, and when ``inputs`` (a preprocessed calibration batch) and
    ``reference`` (the fake-quant outputs on it) are given, only if their outputs agree with fake
    quantization as closely as the precise kernels' do (:func:`kernels_agree`). ``features``
    replaces :func:`cpu_int8_features` (tests fake other CPUs).
    """
    if mode not in ORT_KERNEL_MODES:
        raise ValueError(f"choose_int8_kernels: mode must be one of {list(ORT_KERNEL_MODES)}, got {mode!r}")
    features = features if features is not None else cpu_int8_features()
    errors = (None, None)
    if inputs is not None and reference is not None and (mode == "auto" and (features["vnni"] or not features["x86"])):
        errors = _check_errors(onnx_path, inputs, reference, threads)
    if mode != "auto":
        choice = KernelChoice(mode, "forced (--ort-precision)", features)
    elif features["x86"] and not features["vnni"]:
        choice = KernelChoice("precise", "x86 CPU without VNNI/AMX: the default U8S8 kernels can saturate", features)
    elif errors[0] is None:
        cpu = ", ".join(features["vnni_flags"]) or features["machine"]
        choice = KernelChoice("default", f"CPU features ({cpu}): the default kernels are exact", features)
    elif kernels_agree(*errors):
        choice = KernelChoice("default", f"default kernels agree with fake quant (rel. error {errors[0]:.2g} vs "
                                         f"{errors[1]:.2g} precise)", features, *errors)
    else:
        choice = KernelChoice("precise", f"default kernels disagree with fake quant (rel. error {errors[0]:.2g} "
                                         f"vs {errors[1]:.2g} precise)", features, *errors)
    log.info("onnxruntime INT8 kernels: %s (%s)", choice.kernels, choice.reason)
    return choice
