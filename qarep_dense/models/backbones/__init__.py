"""Detection backbones (feature pyramids out, detectron2-style ``out_channels``/``strides``)."""
from .efficientrep import EfficientRep, RepBlock, SimSPPF

__all__ = ["EfficientRep", "RepBlock", "SimSPPF"]
