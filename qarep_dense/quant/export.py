"""QDQ ONNX export of a fake-quant model and the onnxruntime INT8 check.

TensorRT fuses ``DQ -> Conv -> ReLU -> Q`` itself; onnxruntime's QDQ fusion only turns
``DQ -> Conv -> Q`` into an integer ``QLinearConv``. For ORT we therefore duplicate the consumers'
Q/DQ pair in front of each ReLU that follows a conv. That is exact for symmetric quantization
(zero point 0): relu(q(y)) == q(relu(y)) on the integer grid, and re-quantizing a grid value with
the same scale returns it unchanged.
"""
from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .backends import get_backend
from .calibration import flatten_outputs

log = logging.getLogger(__name__)

INTEGER_CONV_OPS = frozenset({"QLinearConv", "ConvInteger"})
INTEGER_OPS = INTEGER_CONV_OPS | frozenset({
    "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "QGemm", "DynamicQuantizeMatMul",
    "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearGlobalAveragePool", "QLinearAveragePool",
    "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConvTranspose"})
_CONV_PRODUCERS = frozenset({"Conv", "ConvTranspose"})


def export_qdq_onnx(qmodel: nn.Module, example_input: torch.Tensor, path: str | Path, opset: int = 13,
                    ort_friendly: bool = True, dynamic_batch: bool = True,
                    backend: str = "pytorch_quantization") -> Path:
    """Export a calibrated fake-quant model to QDQ ONNX (input "input", outputs "output[_i]").

    example_input: a preprocessed float batch (N, 3, H, W). ``ort_friendly`` adds the exact
    Q/DQ-before-ReLU rewrite (see module doc); TensorRT accepts both forms.
    """
    import onnx  # lazy: deployment-only dependency

    if opset < 13:
        raise ValueError(f"export_qdq_onnx: per-channel QDQ needs opset >= 13, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    b = get_backend(backend)
    device = next(qmodel.parameters()).device
    example_input = example_input.to(device)
    with b.export_mode(qmodel) as model, torch.no_grad():
        n_out = len(flatten_outputs(model(example_input)))
        names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
        axes = {name: {0: "batch"} for name in ["input", *names]} if dynamic_batch else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings from the quantizers' .item() calls
            # Constant folding would fold each weight's Q/DQ into a float constant: keep it off.
            torch.onnx.export(model, (example_input,), str(path), opset_version=opset, dynamo=False,
                              do_constant_folding=True, input_names=["input"], output_names=names,
                              dynamic_axes=axes)
    if ort_friendly:
        proto = onnx.load(str(path))
        moved = requantize_before_relu(proto)
        onnx.save(proto, str(path))
        log.info("export: Q/DQ duplicated in front of %d ReLUs for onnxruntime", moved)
    return path


def requantize_before_relu(proto: Any) -> int:
    """Rewrite ``Conv -> Relu -> Q(s)`` as ``Conv -> Q(s) -> DQ(s) -> Relu -> Q(s)`` in place.

    Only where every consumer of the ReLU is a QuantizeLinear with the same scale and zero point.
    Returns the number of ReLUs handled.
    """
    from onnx import helper

    graph = proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    moved = 0
    for relu in [n for n in graph.node if n.op_type == "Relu"]:
        src = producer.get(relu.input[0])
        users = consumers.get(relu.output[0], [])
        if src is None or src.op_type not in _CONV_PRODUCERS or not users:
            continue
        if any(u.op_type != "QuantizeLinear" or list(u.input[1:]) != list(users[0].input[1:]) for u in users):
            continue
        params = list(users[0].input[1:])
        y = relu.input[0]
        q = helper.make_node("QuantizeLinear", [y, *params], [y + "/rq_q"], name=relu.name + "/rq_q")
        dq = helper.make_node("DequantizeLinear", [y + "/rq_q", *params], [y + "/rq_dq"], name=relu.name + "/rq_dq")
        relu.input[0] = y + "/rq_dq"
        index = list(graph.node).index(relu)
        graph.node.insert(index, dq)
        graph.node.insert(index, q)
        moved += 1
    return moved


@dataclass
class OrtReport:
    """What onnxruntime made of a quantized ONNX model, and how close its outputs are."""

    onnx_path: str
    convs_total: int
    integer_convs: int
    float_convs: int
    all_convs_integer: bool
    integer_kernels: int
    op_counts: dict[str, int] = field(default_factory=dict)
    pre_processed: bool = False
    max_abs_diff: float | None = None
    rel_error: float | None = None
    argmax_agreement: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def make_session(onnx_path: str | Path, threads: int = 2, opt_level: str = "all",
                 optimized_path: str | Path | None = None, precise_int8: bool = True) -> Any:
    """An onnxruntime CPU session; ``optimized_path`` saves the optimized graph ORT will run.

    precise_int8: on x86 CPUs without VNNI, ORT's fast U8S8 integer kernels add pairs of u8*s8
    products in 16 bits and saturate with full-range int8 weights (measured: 8% output error on
    a tiny model, exact with 4-bit weights). "session.x64quantprecision" selects the exact U8U8
    kernels (slower; no effect on VNNI CPUs). Benchmarks report both.
    """
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if opt_level not in levels:
        raise ValueError(f"make_session: opt_level must be one of {sorted(levels)}, got {opt_level!r}")
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


def count_ops(onnx_path: str | Path) -> Counter:
    import onnx

    return Counter(node.op_type for node in onnx.load(str(onnx_path)).graph.node)


def kernel_counts(onnx_path: str | Path, threads: int = 2) -> tuple[Counter, int, int, int]:
    """(optimized op counts, convs in the model, integer convs, float convs) after ORT's EXTENDED
    optimizations (the QDQ fusions; ALL adds hardware-specific layouts that do not change the count)."""
    onnx_path = Path(onnx_path)
    optimized = onnx_path.with_suffix(".ort-optimized.onnx")
    make_session(onnx_path, threads, "extended", optimized)
    counts = count_ops(optimized)
    optimized.unlink(missing_ok=True)
    total = sum(v for k, v in count_ops(onnx_path).items() if k in _CONV_PRODUCERS)
    integer = sum(v for k, v in counts.items() if k in INTEGER_CONV_OPS)
    floating = sum(v for k, v in counts.items() if "Conv" in k and k not in INTEGER_OPS)
    return counts, total, integer, floating


def _pre_process(onnx_path: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = onnx_path.with_suffix(".pre.onnx")
    quant_pre_process(str(onnx_path), str(out))
    return out


def compare_outputs(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> dict[str, float | None]:
    """max |a-b|, ||a-b|| / ||b|| over all outputs, and argmax agreement for (N, classes) outputs."""
    if len(outputs) != len(reference):
        raise ValueError(f"compare_outputs: {len(outputs)} outputs vs {len(reference)} reference outputs")
    diff = max(float(np.abs(a - b).max()) for a, b in zip(outputs, reference))
    num = sum(float(((a - b) ** 2).sum()) for a, b in zip(outputs, reference))
    den = sum(float((b ** 2).sum()) for b in reference)
    agree = None
    if len(reference) == 1 and reference[0].ndim == 2:
        agree = float((outputs[0].argmax(1) == reference[0].argmax(1)).mean())
    return {"max_abs_diff": diff, "rel_error": (num / den) ** 0.5 if den > 0 else None, "argmax_agreement": agree}


def check_ort_int8(onnx_path: str | Path, inputs: torch.Tensor | np.ndarray,
                   reference_outputs: Any = None, threads: int = 2, pre_process: bool | None = None) -> OrtReport:
    """Count integer vs float conv kernels in ORT's optimized graph and compare ORT's outputs.

    inputs: a preprocessed float batch; reference_outputs: the PyTorch fake-quant outputs on it
    (tensor, or list/tuple/dict of tensors). ``pre_process``: run ORT's ``quant_pre_process``
    first (True), never (False), or only if some conv did not become an integer kernel (None).
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"check_ort_int8: {onnx_path} does not exist")
    run_path, done = onnx_path, False
    counts, total, integer, floating = kernel_counts(run_path, threads)
    if pre_process or (pre_process is None and (floating or integer < total)):
        run_path, done = _pre_process(onnx_path), True
        counts, total, integer, floating = kernel_counts(run_path, threads)
    report = OrtReport(str(run_path), total, integer, floating, bool(total and integer >= total and not floating),
                       sum(v for k, v in counts.items() if k in INTEGER_OPS), dict(counts), done)
    if reference_outputs is not None:
        x = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
        outs = make_session(run_path, threads).run(None, {"input": x.astype(np.float32)})
        ref = [t.detach().float().cpu().numpy() for t in flatten_outputs(reference_outputs)]
        for key, value in compare_outputs(outs, ref).items():
            setattr(report, key, value)
    return report


class OrtModule(nn.Module):
    """An onnxruntime session behind ``nn.Module``, so evaluators can score an ONNX model like a torch one.

    forward(x: (N, 3, H, W) float) -> tensor (or tuple of tensors) on x's device.
    """

    def __init__(self, onnx_path: str | Path, threads: int = 2, precise_int8: bool = True):
        super().__init__()
        self.onnx_path = str(onnx_path)
        self.session = make_session(onnx_path, threads, precise_int8=precise_int8)

    def forward(self, x: torch.Tensor):
        outs = self.session.run(None, {"input": x.detach().float().cpu().numpy()})
        tensors = tuple(torch.from_numpy(o).to(x.device) for o in outs)
        return tensors[0] if len(tensors) == 1 else tensors
