"""Why a model quantizes badly: the paper's weight and activation analyses (C1/C2, Fig. 2-4).

- :mod:`.weights`: fused-weight statistics per conv/linear layer (Fig. 2/3, C1).
- :mod:`.bn_scales`: per-branch BN multipliers gamma/sqrt(var+eps) and near-dead channels (Fig. 3).
- :mod:`.activations`: layer-input statistics and per-branch outputs via hooks (Fig. 4, C2).
- :mod:`.friendliness`: the C1/C2 flags; :mod:`.report`, :mod:`.plots`: Markdown/JSON and PNG output.
- :func:`analyze_model` runs all of it and writes the files.
"""
from .activations import ActivationRecorder, BranchRecorder, branch_decomposition
from .bn_scales import BlockScaleStats, BranchScale, bn_scale_stats, bn_scale_values
from .friendliness import Flag, Thresholds, flag_activations, flag_weights
from .pipeline import PLOT_FILES, analyze_model
from .weights import LayerWeightStats, int8_channel_error, int8_quantize, layer_weight_stats, weight_stats

__all__ = [
    "ActivationRecorder", "BranchRecorder", "branch_decomposition",
    "BlockScaleStats", "BranchScale", "bn_scale_stats", "bn_scale_values",
    "Flag", "Thresholds", "flag_activations", "flag_weights",
    "PLOT_FILES", "analyze_model",
    "LayerWeightStats", "int8_channel_error", "int8_quantize", "layer_weight_stats", "weight_stats",
]
