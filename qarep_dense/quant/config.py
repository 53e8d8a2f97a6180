"""Quantization settings: one typed dataclass, validated once with clear messages."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..choices import CALIBRATORS
from .backends import backend_names

HISTOGRAM_CALIBRATORS: frozenset[str] = frozenset({"percentile", "mse", "entropy"})


@dataclass
class QuantConfig:
    """How to quantize a fused model (the paper's setting is the default: W8A8, max calibration).

    Weights: symmetric, per output channel (max of |w| per channel). Activations: symmetric, per
    tensor, at the input of every conv/linear (first and last layer included), of pooling layers
    (``quantize_pooling``), upsample outputs and concats (one shared scale per concat).

    calibrator: "max" | "percentile" | "mse" | "entropy" (activations only).
    percentile: the percentile calibrator's value, e.g. 99.99.
    num_calib_batches: batches of the calibration loader to use (>= 1).
    weight_bits / act_bits: 8/8 (W8A8) or 4/8 (W4A8); any value in 2..8 runs in fake-quant.
    skip_layers: module names kept in float; a name also covers every module below it.
    repair_dead_channels: before PTQ, zero the kernel slices of input channels that are exactly zero on
        the calibration data *and* on a held-out batch, and only where such a slice sets its output
        channel's INT8 scale (the identity outliers); FP32 agreement on the held-out batch is reported
        (see :mod:`qarep_dense.quant.repair`).
    bias_correction: after calibration, add to each quantized layer's bias the mean shift quantization
        put on its output, measured on the calibration images (see :mod:`qarep_dense.quant.bias_correction`).
    quantize_pooling: also quantize the input of average pools, so the last conv's output is an
        integer tensor (ORT then runs that conv as an integer kernel too).
    quantize_conv_outputs: give every conv whose output is not read by exactly one quantizer an
        output quantizer of its own (TensorRT-style int8 conv outputs: detector head convs before
        their SiLU, prediction convs, convs fanning out to a concat and a conv or to a max-pool),
        so onnxruntime runs every conv as an integer kernel. Found from the data flow of one
        forward pass; a classifier (each conv read by one quantizer) gets none.
    num_bins / hist_start_bin / hist_stride: histogram calibrator settings.
    backend: the fake-quant library, "pytorch_quantization" (the paper's toolkit) or "modelopt" (NVIDIA
        Model Optimizer, its maintained successor); the same settings give the same model in either
        (see :mod:`qarep_dense.quant.backends` and docs/quantization.md).
    """

    calibrator: str = "max"
    percentile: float = 99.99
    num_calib_batches: int = 8
    weight_bits: int = 8
    act_bits: int = 8
    skip_layers: tuple[str, ...] = field(default_factory=tuple)
    repair_dead_channels: bool = False
    bias_correction: bool = False
    quantize_pooling: bool = True
    quantize_conv_outputs: bool = True
    num_bins: int = 2048
    hist_start_bin: int = 128
    hist_stride: int = 1
    backend: str = "pytorch_quantization"

    def __post_init__(self) -> None:
        self.skip_layers = tuple(self.skip_layers)
        self.validate()

    def validate(self) -> "QuantConfig":
        """Raise ValueError naming the bad field; returns self for chaining."""
        if self.calibrator not in CALIBRATORS:
            raise ValueError(f"QuantConfig.calibrator: unknown calibrator {self.calibrator!r}; "
                             f"expected one of {list(CALIBRATORS)}")
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"QuantConfig.percentile must be in (0, 100], got {self.percentile}")
        if int(self.num_calib_batches) != self.num_calib_batches or self.num_calib_batches < 1:
            raise ValueError(f"QuantConfig.num_calib_batches must be an integer >= 1, got {self.num_calib_batches}")
        for name in ("weight_bits", "act_bits"):
            bits = getattr(self, name)
            if not isinstance(bits, int) or not 2 <= bits <= 8:
                raise ValueError(f"QuantConfig.{name} must be an integer in 2..8, got {bits!r}")
        for name in ("repair_dead_channels", "bias_correction", "quantize_pooling", "quantize_conv_outputs"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"QuantConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if self.num_bins < 16 or self.hist_start_bin < 1 or self.hist_stride < 1:
            raise ValueError("QuantConfig: num_bins >= 16, hist_start_bin >= 1 and hist_stride >= 1 are required, "
                             f"got {self.num_bins}, {self.hist_start_bin}, {self.hist_stride}")
        if self.backend not in backend_names():
            raise ValueError(f"QuantConfig.backend: unknown backend {self.backend!r}; "
                             f"expected one of {backend_names()}")
        if self.hist_start_bin >= self.num_bins:
            raise ValueError(f"QuantConfig.hist_start_bin ({self.hist_start_bin}) must be below num_bins ({self.num_bins})")
        return self

    @property
    def scheme(self) -> str:
        """Short name such as "W8A8" or "W4A8"."""
        return f"W{self.weight_bits}A{self.act_bits}"

    def as_dict(self) -> dict:
        return asdict(self)
