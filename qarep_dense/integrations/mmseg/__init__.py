"""MMSegmentation 1.x adapter: the ONLY package of qarep_dense that imports mmengine, mmseg or mmcv.

Configs import it through ``custom_imports``; the tools through ``qarep_dense.tasks.segmentation``. It
imports nothing above ``engine/``, ``models/``, ``data/`` and ``layers/`` (a Hyper-Search checkpoint is read
with ``engine.checkpoint.load_hs_model``, like the recipes do). By job:

* :mod:`.shims`: ``mmcv.ops`` under mmcv-lite and ``mmseg::`` config bases without ``pkg_resources``
  (imported first: mmseg needs both when it is imported);
* :mod:`.checkpoints`: mmengine's ``iter_*.pth`` under torch's ``weights_only=True``, and a readable
  error naming a bad resume / ``load_from`` file;
* :mod:`.registrations`: ``QARepVGGBackbone``, ``CheckSegLabels``, ``ChannelsLastHook`` and ``RepOptimizerConstructor`` in
  mmseg's registries;
* :mod:`.runner`: configs with checked ``--cfg-options``, the Runner, safe resume, the launcher check;
* :mod:`.data`: dataset file checks at build time (missing, corrupt, mis-sized), loaders, the mIoU metric;
* :mod:`.models`: segmentors as tensor-in / logits-out models, their fusion and checkpoint metadata.
"""
from .shims import *  # noqa: F401,F403  (first: mmseg imports mmcv.ops on import)
from .checkpoints import *  # noqa: F401,F403
from .registrations import *  # noqa: F401,F403
from .runner import *  # noqa: F401,F403
from .data import *  # noqa: F401,F403
from .models import *  # noqa: F401,F403
from mmengine.logging import HistoryBuffer  # noqa: F401  (named in MMENGINE_CHECKPOINT_GLOBALS)

from . import checkpoints, data, models, registrations, runner, shims

__all__ = [*shims.__all__, *checkpoints.__all__, *registrations.__all__, *runner.__all__, *data.__all__,
           *models.__all__]
