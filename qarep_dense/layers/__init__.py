from .conv import ConvAct, ConvBNAct, make_act
from .rep import Reparameterizable, reparameterize
from .rep_blocks import (
    BLOCK_TYPES,
    BlockSpec,
    LinearAddBlock,
    RepVGGBlock,
    ScaleLayer,
    block_spec,
    make_block,
)

__all__ = [
    "ConvAct", "ConvBNAct", "make_act", "Reparameterizable", "reparameterize",
    "BLOCK_TYPES", "BlockSpec", "LinearAddBlock", "RepVGGBlock", "ScaleLayer", "block_spec", "make_block",
]
