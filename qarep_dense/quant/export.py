"""QDQ ONNX export of a fake-quant model and the onnxruntime INT8 check.

TensorRT fuses ``DQ -> Conv -> ReLU -> Q`` itself; onnxruntime's QDQ fusion only turns
``DQ -> Conv -> Q`` into an integer ``QLinearConv``. For ORT we therefore duplicate the consumers'
Q/DQ pair in front of each ReLU that follows a conv. That is exact for symmetric quantization
(zero point 0): relu(q(y)) == q(relu(y)) on the integer grid, and re-quantizing a grid value with
the same scale returns it unchanged.

Second ORT rewrite: activations as uint8 with zero point 128. ORT's x86 CPU kernels take uint8
activations only; it converts an int8 Q/DQ pair itself, but only where the Q has ONE consumer, so
any quantized tensor that fans out (a conv output read by a SiLU's Sigmoid and Mul, an output
quantizer feeding a concat and a conv) stayed int8 and its convs stayed float. The shift is exact:
clamp(round(x/s), -128, 127) + 128 == clamp(round(x/s) + 128, 0, 255). Weights stay int8.

Third: a conv bias that int32 cannot hold at ORT's bias scale (input scale * weight scale) is moved
into a float ``Add`` after the conv; ORT would otherwise saturate it when it forms QLinearConv and
return wrong outputs silently (seen on untrained models, whose activation scales are tiny). That
conv then stays a float kernel, and ``check_ort_int8`` says so.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..deploy.ort import (KernelChoice, OrtModule, choose_int8_kernels, export_graph, make_session,  # noqa: F401
                          relative_error, run_session)
from .backends import backend_of
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
                    backend: str | None = None, dynamic_hw: bool = False) -> Path:
    """Export a calibrated fake-quant model to QDQ ONNX (input "input", outputs "output[_i]").

    example_input: a preprocessed float batch (N, 3, H, W). ``ort_friendly`` adds the two exact
    onnxruntime rewrites (see module doc: Q/DQ before ReLU, uint8 activations); keep it False for
    TensorRT, which wants int8 (zero point 0) activations. dynamic_hw: free input height and width.
    backend: the fake-quant backend's name; None: the one whose quantizers ``qmodel`` holds.
    """
    import onnx  # lazy: deployment-only dependency

    if opset < 13:
        raise ValueError(f"export_qdq_onnx: per-channel QDQ needs opset >= 13, got {opset}")
    path = Path(path)
    b = backend_of(qmodel, backend)
    device = next(qmodel.parameters()).device
    with b.export_mode(qmodel) as model, torch.no_grad():
        export_graph(model, example_input.to(device), path, opset, dynamic_batch, quiet=True, dynamic_hw=dynamic_hw)
    if ort_friendly:
        proto = onnx.load(str(path))
        moved = requantize_before_relu(proto)
        split = split_overflowing_bias(proto)
        if split:
            log.warning("export: %d conv biases do not fit int32 at the bias scale of an integer conv; they "
                        "stay float convs + Add (exact, not integer kernels): %s", len(split), ", ".join(split))
        shifted = activations_to_uint8(proto)
        onnx.save(proto, str(path))
        log.info("export: Q/DQ duplicated in front of %d ReLUs, %d activation Q/DQ nodes made uint8, for "
                 "onnxruntime", moved, shifted)
    return path


def _constant_values(graph: Any) -> dict[str, np.ndarray]:
    """{tensor name: value} of the graph's initializers and Constant-node outputs."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _identity_sources(graph: Any) -> dict[str, str]:
    return {node.output[0]: node.input[0] for node in graph.node if node.op_type == "Identity"}


def _bias_overflows(conv: Any, values: dict[str, np.ndarray], alias: dict[str, str], producer: dict[str, Any]) -> bool:
    """True when ``round(b / (s_x * s_w))`` plus the largest possible accumulator (K * 255 * 128,
    K = weights per output channel) would not fit int32 in an integer ``conv``."""
    x_dq, w_dq = producer.get(conv.input[0]), producer.get(conv.input[1])
    bias = values.get(alias.get(conv.input[2], conv.input[2]))
    if bias is None or x_dq is None or w_dq is None:
        return False
    if x_dq.op_type != "DequantizeLinear" or w_dq.op_type != "DequantizeLinear":
        return False
    s_x, s_w = values.get(x_dq.input[1]), values.get(w_dq.input[1])
    w_q = producer.get(w_dq.input[0])  # the export quantizes the float weight inside the graph
    w_src = w_q.input[0] if w_q is not None and w_q.op_type == "QuantizeLinear" else w_dq.input[0]
    weight = values.get(alias.get(w_src, w_src))
    if s_x is None or s_w is None or weight is None or np.size(s_x) != 1:
        return False
    headroom = float(np.prod(weight.shape[1:])) * 255 * 128
    ratio = np.abs(bias.astype(np.float64)).reshape(-1) / (float(s_x) * s_w.astype(np.float64).reshape(-1))
    return float(ratio.max()) + headroom >= 2 ** 31 - 1


def split_overflowing_bias(proto: Any) -> list[str]:
    """Move the bias of each ``DQ -> Conv`` whose bias overflows int32 at ORT's bias scale into a
    float ``Add`` after the conv, in place; returns the names of the convs changed."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    values, alias = _constant_values(graph), _identity_sources(graph)
    producer = {out: node for node in graph.node for out in node.output}
    changed = []
    for conv in [n for n in graph.node if n.op_type == "Conv" and len(n.input) > 2 and n.input[2]]:
        if not _bias_overflows(conv, values, alias, producer):
            continue
        bias = values[alias.get(conv.input[2], conv.input[2])]
        out, name = conv.output[0], conv.output[0] + "/bias"
        graph.initializer.append(numpy_helper.from_array(bias.reshape(1, -1, 1, 1).astype(np.float32), name))
        conv.output[0] = out + "/no_bias"
        del conv.input[2]
        add = helper.make_node("Add", [conv.output[0], name], [out], name=conv.name + "/bias_add")
        graph.node.insert(list(graph.node).index(conv) + 1, add)
        changed.append(conv.name)
    return changed


def activations_to_uint8(proto: Any) -> int:
    """Give every per-tensor int8 Q/DQ node with zero point 0 the uint8 zero point 128, in place.

    Per-tensor scale (a scalar) marks an activation; per-channel weight Q/DQ keep int8 (ORT picks
    its own weight kernels). Returns the number of nodes changed.
    """
    from onnx import TensorProto, helper

    graph = proto.graph
    values = _constant_values(graph)
    zp_name = "activation_zero_point_u8"
    changed = 0
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        scale, zero = values.get(node.input[1]), values.get(node.input[2])
        if scale is None or zero is None or scale.ndim != 0 or zero.dtype != np.int8 or zero.any():
            continue
        node.input[2] = zp_name
        changed += 1
    if changed:
        graph.initializer.append(helper.make_tensor(zp_name, TensorProto.UINT8, [], [128]))
    return changed


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
    """What onnxruntime made of a quantized ONNX model, and how close its outputs are.

    ``convs_total`` / ``integer_convs`` / ``float_convs`` / ``all_convs_integer`` are about ``Conv``
    nodes only. ``ConvTranspose`` is counted apart: ORT's CPU provider has no integer kernel for it
    (a QDQ ``DQ -> ConvTranspose -> Q`` stays a float ConvTranspose between DQ and Q).
    """

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
    conv_transposes_total: int = 0
    integer_conv_transposes: int = 0
    float_conv_transposes: int = 0
    kernels: str = "precise"  # ORT INT8 kernels the outputs were compared with: "default" or "precise"
    kernel_reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def count_ops(onnx_path: str | Path) -> Counter:
    import onnx

    return Counter(node.op_type for node in onnx.load(str(onnx_path)).graph.node)


def kernel_counts(onnx_path: str | Path, threads: int = 2) -> tuple[Counter, int, int, int]:
    """(optimized op counts, Conv nodes in the model, integer convs, float convs) after ORT's EXTENDED
    optimizations (the QDQ fusions; ALL adds hardware-specific layouts that do not change the count).
    ConvTranspose is not counted here (see :func:`conv_transpose_counts`)."""
    onnx_path = Path(onnx_path)
    optimized = onnx_path.with_suffix(".ort-optimized.onnx")
    make_session(onnx_path, threads, "extended", optimized)
    counts = count_ops(optimized)
    optimized.unlink(missing_ok=True)
    total = count_ops(onnx_path).get("Conv", 0)
    integer = sum(v for k, v in counts.items() if k in INTEGER_CONV_OPS)
    # Any float conv op ORT may turn a Conv into (Conv, FusedConv = Conv + activation, Nhwc* layouts).
    floating = sum(v for k, v in counts.items() if "Conv" in k and "ConvTranspose" not in k and k not in INTEGER_OPS)
    return counts, total, integer, floating


def conv_transpose_counts(onnx_path: str | Path, optimized_counts: Counter) -> tuple[int, int, int]:
    """(ConvTranspose nodes in the model, integer ones, float ones) given ORT's optimized op counts."""
    total = count_ops(onnx_path).get("ConvTranspose", 0)
    return total, optimized_counts.get("QLinearConvTranspose", 0), optimized_counts.get("ConvTranspose", 0)


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
    den = sum(float((b ** 2).sum()) for b in reference)
    agree = None
    if len(reference) == 1 and reference[0].ndim == 2:
        agree = float((outputs[0].argmax(1) == reference[0].argmax(1)).mean())
    return {"max_abs_diff": diff, "rel_error": relative_error(outputs, reference) if den > 0 else None,
            "argmax_agreement": agree}


def check_ort_int8(onnx_path: str | Path, inputs: torch.Tensor | np.ndarray,
                   reference_outputs: Any = None, threads: int = 2, pre_process: bool | None = None,
                   precision: str = "auto") -> OrtReport:
    """Count integer vs float Conv kernels (ConvTranspose apart) in ORT's optimized graph and compare outputs.

    inputs: a preprocessed float batch; reference_outputs: the PyTorch fake-quant outputs on it
    (tensor, or list/tuple/dict of tensors). ``pre_process``: run ORT's ``quant_pre_process``
    first (True), never (False), or only if some conv did not become an integer kernel (None).
    precision: ORT's INT8 kernels, "auto" (chosen per machine and checked against the reference,
    see :func:`~qarep_dense.deploy.ort.choose_int8_kernels`), "default" or "precise"; the report
    says which ran (``kernels``) and why.
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
    (report.conv_transposes_total, report.integer_conv_transposes,
     report.float_conv_transposes) = conv_transpose_counts(run_path, counts)
    choice = choose_int8_kernels(run_path, inputs, reference_outputs, precision, threads)
    report.kernels, report.kernel_reason = choice.kernels, choice.reason
    if reference_outputs is not None:
        outs = run_session(make_session(run_path, threads, precise_int8=choice.precise), inputs)
        ref = [t.detach().float().cpu().numpy() for t in flatten_outputs(reference_outputs)]
        for key, value in compare_outputs(outs, ref).items():
            setattr(report, key, value)
    return report
