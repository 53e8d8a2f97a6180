"""Weight decay (normal L2, RepVGG's custom L2, the paper's Eq. 5) and RepOptimizer."""
from .repopt import RepOptimizerSGD, build_repopt_sgd, extract_scales, gradient_masks, init_target_from_scales
from .weight_decay import L2_MODES, custom_l2_penalty, param_groups

__all__ = ["L2_MODES", "param_groups", "custom_l2_penalty", "RepOptimizerSGD", "build_repopt_sgd",
           "extract_scales", "gradient_masks", "init_target_from_scales"]
