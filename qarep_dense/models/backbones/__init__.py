"""Detection backbones (feature pyramids out, detectron2-style ``out_channels``/``strides``)."""
from .efficientrep import EfficientRep, RepBlock, SimSPPF
from .rep_trunk import OUTPUT_STRIDES, RepTrunk, build_stages

__all__ = ["EfficientRep", "RepBlock", "SimSPPF", "OUTPUT_STRIDES", "RepTrunk", "build_stages"]
