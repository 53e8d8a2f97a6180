"""MMSegmentation 1.x adapter: the ONLY module of the package that imports mmengine, mmseg or mmcv.

Importing it (configs do, through ``custom_imports``) registers in mmseg's registries:

* ``QARepVGGBackbone`` (MODELS): the zoo trunk (:class:`~qarep_dense.models.backbones.RepTrunk`) with
  ``arch``, ``block``, ``out_indices``, ``strides``, ``dilations``, ``norm_eval``, ``frozen_stages`` and
  ``init_cfg=dict(type='Pretrained', checkpoint=...)`` that loads one of OUR classification
  checkpoints strictly (every missing or unexpected key named);
* ``CheckSegLabels`` (TRANSFORMS): fails naming the label file when it holds ids outside 0..C-1 and
  the ignore index (mmseg's metric would silently drop them);
* ``RepOptimizerConstructor`` (OPTIM_WRAPPER_CONSTRUCTORS): RepOptimizer SGD with the gradient masks of
  a Hyper-Search classification checkpoint on the backbone, plain SGD on the heads.

It also makes mmengine's own checkpoints load under torch's ``weights_only=True`` by allow-listing
exactly the globals they hold, and supplies ``mmcv.ops.point_sample`` when mmcv-lite (no compiled
ops) is installed. Deploy, the tensor-in / logits-out segmentor and the mIoU evaluator live in
:mod:`qarep_dense.integrations.mmseg_deploy`.
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import logging
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn


def _install_point_sample_adapter() -> bool:
    """Expose mmcv's pure-PyTorch ``point_sample`` as ``mmcv.ops`` when the compiled ops are missing.

    mmseg imports ``mmcv.ops.point_sample`` (and ``sigmoid_focal_loss``, which it calls on CUDA only)
    at import time; mmcv-lite ships the Python file but its ``mmcv.ops`` package fails on the
    missing ``mmcv._ext``. Returns True when the adapter was installed; with full mmcv nothing changes.
    """
    try:
        importlib.import_module("mmcv.ops")
        return False
    except ImportError:
        pass
    import mmcv

    for name in [m for m in sys.modules if m == "mmcv.ops" or m.startswith("mmcv.ops.")]:
        del sys.modules[name]  # the half-imported package of the failed attempt
    ops = types.ModuleType("mmcv.ops")
    ops.__path__ = [str(Path(mmcv.__file__).parent / "ops")]  # its pure-Python files stay importable
    ops.__doc__ = "qarep-dense adapter: mmcv-lite has no compiled ops; only pure-PyTorch ones are here."
    sys.modules["mmcv.ops"] = ops
    mmcv.ops = ops
    ops.point_sample = importlib.import_module("mmcv.ops.point_sample").point_sample

    def sigmoid_focal_loss(*args, **kwargs):
        raise RuntimeError("mmcv.ops.sigmoid_focal_loss needs mmcv's compiled ops (mmcv-lite is installed); "
                           "mmseg uses its pure-PyTorch focal loss on CPU")

    ops.sigmoid_focal_loss = sigmoid_focal_loss

    def missing(name: str):
        # mmseg guards its optional compiled ops with ``except ModuleNotFoundError``
        if name.startswith("_"):
            raise AttributeError(name)
        raise ModuleNotFoundError(f"mmcv.ops.{name} needs mmcv's compiled ops; mmcv-lite is installed")

    ops.__getattr__ = missing
    return True


POINT_SAMPLE_ADAPTED = _install_point_sample_adapter()

from mmengine.config import Config  # noqa: E402  (after the adapter: mmseg imports mmcv.ops on import)
from mmengine.hooks import Hook  # noqa: E402
from mmengine.logging import HistoryBuffer  # noqa: E402
from mmengine.model import is_model_wrapper  # noqa: E402
from mmengine.optim import OptimWrapper  # noqa: E402
from mmseg.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS, TRANSFORMS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

from ..engine.checkpoint import CheckpointError, load_checkpoint, load_model_state  # noqa: E402
from ..models.backbones.rep_trunk import OUTPUT_STRIDES, RepTrunk  # noqa: E402

def _patch_package_lookup() -> bool:
    """Let mmengine resolve ``mmseg::`` config bases without ``pkg_resources``.

    mmengine 0.10 finds an installed package's bundled configs through ``pkg_resources``, which
    setuptools >= 81 no longer ships; ``Config.fromfile`` then fails on every ``mmseg::_base_/...``.
    Only when ``pkg_resources`` is missing, the two lookups its config module uses are replaced by
    ``importlib.metadata`` equivalents (same answers for an installed distribution). Returns True if patched.
    """
    if importlib.util.find_spec("pkg_resources") is not None:
        return False
    import importlib.metadata as metadata

    import mmengine.config.config as config_module

    def is_installed(package: str) -> bool:
        try:
            metadata.distribution(package)
            return True
        except metadata.PackageNotFoundError:
            spec = importlib.util.find_spec(package)
            return spec is not None and spec.origin is not None

    def get_installed_path(package: str) -> str:
        try:
            dist = metadata.distribution(package)
        except metadata.PackageNotFoundError:
            spec = importlib.util.find_spec(package)
            if spec is None or spec.origin is None:
                raise
            return str(Path(spec.origin).parent)
        location = Path(dist.locate_file(""))
        if (location / package).exists():
            return str(location / package)
        top_level = (dist.read_text("top_level.txt") or "").split()
        if not top_level:
            raise ValueError(f"cannot infer the module name of {package}")
        return str(location / top_level[0])

    config_module.is_installed = is_installed
    config_module.get_installed_path = get_installed_path
    return True


PACKAGE_LOOKUP_PATCHED = _patch_package_lookup()
log = logging.getLogger(__name__)
register_all_modules(init_default_scope=False)


# --- mmengine checkpoints under weights_only=True ------------------------------------------------

def _numpy_globals() -> list:
    """numpy's array and scalar reconstructors and dtype classes (HistoryBuffer arrays, the ETA scalar)."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtypes]


_HISTORY_STATISTICS = frozenset({"min", "max", "current", "mean"})


def history_buffer_getattr(obj: object, name: str):
    """The one ``getattr`` mmengine checkpoints need: a HistoryBuffer pickles its statistics
    methods as ``getattr(HistoryBuffer, "mean")``. Anything else is refused (a general ``getattr``
    in the unpickler would reach any object's globals)."""
    if obj is HistoryBuffer and name in _HISTORY_STATISTICS:
        return getattr(obj, name)
    raise pickle.UnpicklingError(f"refused getattr({obj!r}, {name!r}) while loading a checkpoint")


# Exactly what mmengine 0.10's CheckpointHook writes beyond tensors and plain containers: the
# MessageHub's HistoryBuffers (with their statistics methods), numpy arrays and scalars.
MMENGINE_CHECKPOINT_GLOBALS: list = [HistoryBuffer, (history_buffer_getattr, "builtins.getattr"), *_numpy_globals()]


def allow_mmengine_checkpoints() -> None:
    """Allow-list :data:`MMENGINE_CHECKPOINT_GLOBALS` for ``torch.load(..., weights_only=True)``.

    mmengine calls ``torch.load`` with torch's default (weights_only=True since torch 2.6); its
    checkpoints then fail on those globals. Only these exact classes are allowed; any other
    global in a file (a crafted pickle) is still refused by torch.
    """
    torch.serialization.add_safe_globals(MMENGINE_CHECKPOINT_GLOBALS)


allow_mmengine_checkpoints()


# --- backbone ------------------------------------------------------------------------------------

@MODELS.register_module()
class QARepVGGBackbone(RepTrunk):
    """The zoo trunk as an mmseg backbone (RepVGG, QARepVGG and every other block type).

    arch: a zoo row ("B1g4", "A0", "A0h", "test" ...); block: a block type ("qarepvgg", "repvgg",
    "repopt", "hs" ...); out_indices: stages 0..4 returned (default 1..4, strides 4/8/16/32);
    strides/dilations: per stage, or ``output_stride`` 32/16/8 for the standard pairs.
    norm_eval: keep BN statistics frozen in training; frozen_stages: stages 0..k get no gradient.
    init_cfg: None (fresh init) or ``dict(type='Pretrained', checkpoint=PATH)`` with a qarep-dense
    classification checkpoint of the same arch and block (train form; its ``fc`` is dropped).
    Input (N, 3, H, W) -> tuple of (N, out_channels[i], H/out_strides[i], W/out_strides[i]).
    """

    def __init__(self, arch: str = "B1g4", block: str = "qarepvgg", in_channels: int = 3,
                 out_indices: tuple[int, ...] = (1, 2, 3, 4), strides: tuple[int, ...] | None = None,
                 dilations: tuple[int, ...] | None = None, output_stride: int | None = None,
                 norm_eval: bool = False, frozen_stages: int = -1, init_cfg: dict | None = None):
        if output_stride is not None:
            if output_stride not in OUTPUT_STRIDES:
                raise ValueError(f"QARepVGGBackbone: output_stride must be one of {sorted(OUTPUT_STRIDES)}, "
                                 f"got {output_stride}")
            if strides is not None or dilations is not None:
                raise ValueError("QARepVGGBackbone: give output_stride or strides/dilations, not both")
            strides, dilations = OUTPUT_STRIDES[output_stride]
        strides = OUTPUT_STRIDES[32][0] if strides is None else tuple(strides)
        dilations = OUTPUT_STRIDES[32][1] if dilations is None else tuple(dilations)
        super().__init__(arch, block, in_channels, tuple(out_indices), strides, dilations)
        if not -1 <= frozen_stages < len(self.stages):
            raise ValueError(f"QARepVGGBackbone: frozen_stages must be -1..{len(self.stages) - 1}, got {frozen_stages}")
        if init_cfg is not None and (not isinstance(init_cfg, dict) or init_cfg.get("type") != "Pretrained"
                                     or not init_cfg.get("checkpoint")):
            raise ValueError(f"QARepVGGBackbone: init_cfg must be None or dict(type='Pretrained', checkpoint=PATH), "
                             f"got {init_cfg!r}")
        self.norm_eval, self.frozen_stages, self.init_cfg = norm_eval, frozen_stages, init_cfg
        self._freeze_stages()

    def init_weights(self) -> None:
        """Load the pretrained classification checkpoint named by ``init_cfg`` (mmengine calls this)."""
        if self.init_cfg is None:
            return
        path = str(self.init_cfg["checkpoint"])
        payload = load_checkpoint(path)
        meta = payload["meta"]
        if meta.get("task") != "cls" or meta.get("fused"):
            raise CheckpointError(f"{path}: a pretrained backbone needs a train-form classification checkpoint; "
                                  f"this one has task {meta.get('task')!r}, fused {meta.get('fused')!r}")
        for key in ("arch", "block"):
            if meta.get(key) != getattr(self, key):
                raise CheckpointError(f"{path}: checkpoint {key} {meta.get(key)!r} does not match the backbone's "
                                      f"{getattr(self, key)!r}")
        state = {k: v for k, v in payload["model"].items() if not k.startswith("fc.")}
        load_model_state(self, state, source=path)  # strict: names missing / unexpected / mis-shaped keys
        log.info("backbone %s/%s loaded from %s", self.arch, self.block, path)
        self._freeze_stages()

    def _freeze_stages(self) -> None:
        for stage in self.stages[: self.frozen_stages + 1]:
            stage.eval()
            for p in stage.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> "QARepVGGBackbone":
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


# --- data checks ---------------------------------------------------------------------------------

@TRANSFORMS.register_module()
class CheckSegLabels:
    """Pipeline step after ``LoadAnnotations``: raise naming the label file if it holds an id outside
    0..num_classes-1 and ``ignore_index`` (mmseg's IoU metric would silently drop such pixels)."""

    def __init__(self, num_classes: int = 19, ignore_index: int = 255):
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)

    def __call__(self, results: dict) -> dict:
        seg = np.asarray(results["gt_seg_map"])
        counts = np.bincount(seg.ravel().astype(np.int64, copy=False), minlength=256)
        counts[: self.num_classes] = 0
        if 0 <= self.ignore_index < counts.size:
            counts[self.ignore_index] = 0
        bad = np.flatnonzero(counts)
        if bad.size:
            raise ValueError(f"{results.get('seg_map_path')}: label ids {bad[:10].tolist()} are outside "
                             f"0..{self.num_classes - 1} and the ignore index {self.ignore_index} "
                             f"(is it a labelIds map instead of labelTrainIds?)")
        return results

    def __repr__(self) -> str:
        return f"CheckSegLabels(num_classes={self.num_classes}, ignore_index={self.ignore_index})"


def check_dataset_files(dataset_cfg: dict, config_path: str | None = None) -> int:
    """Check a Cityscapes-style dataset config against the disk; returns the number of images.

    Raises FileNotFoundError naming the folder when the data root or a split folder is missing,
    ValueError naming the folder when it holds no image, and naming the image when its label
    file is missing (mmseg itself would fail later, deep in a worker, or pair files silently).
    """
    root = Path(dataset_cfg.get("data_root") or "")
    prefix = dataset_cfg.get("data_prefix", {})
    img_suffix = dataset_cfg.get("img_suffix", "_leftImg8bit.png")
    seg_suffix = dataset_cfg.get("seg_map_suffix", "_gtFine_labelTrainIds.png")
    where = f" (config {config_path})" if config_path else ""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data root not found{where}; expected leftImg8bit/ and gtFine/ below it")
    img_dir, seg_dir = root / prefix.get("img_path", ""), root / prefix.get("seg_map_path", "")
    for folder in (img_dir, seg_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: split folder not found under data root {root}{where}")
    images = sorted(img_dir.rglob(f"*{img_suffix}"))
    if not images:
        raise ValueError(f"{img_dir}: no *{img_suffix} images{where}")
    for image in images:
        label = seg_dir / image.relative_to(img_dir).parent / (image.name[: -len(img_suffix)] + seg_suffix)
        if not label.is_file():
            raise FileNotFoundError(f"{image}: image has no label file (expected {label}); "
                                    "make labelTrainIds with cityscapesscripts' createTrainIdLabelImgs")
    return len(images)


# --- RepOptimizer --------------------------------------------------------------------------------

@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class RepOptimizerConstructor:
    """``optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=..., momentum=...,
    weight_decay=...), constructor='RepOptimizerConstructor', paramwise_cfg=dict(hs_checkpoint=PATH))``.

    PATH: a qarep-dense Hyper-Search ('hs') classification checkpoint of the backbone's arch. Its
    scales give the gradient masks of the backbone's 'repopt' convs; the heads get plain SGD. A
    backbone without a pretrained ``init_cfg`` is re-initialised from the scales (a pretrained
    RepOpt-VGG backbone was trained with the same masks and keeps its weights).
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None):
        self.cfg = dict(optim_wrapper_cfg)
        self.hs_checkpoint = (paramwise_cfg or {}).get("hs_checkpoint")
        if not self.hs_checkpoint:
            raise ValueError("RepOptimizerConstructor needs paramwise_cfg=dict(hs_checkpoint=PATH)")

    def __call__(self, model: nn.Module) -> OptimWrapper:
        from ..optim.repopt import RepOptimizerSGD, extract_scales, gradient_masks, init_target_from_scales
        from ..optim.weight_decay import param_groups
        from ..tasks.registry import load_model

        model = model.module if is_model_wrapper(model) else model
        backbone = model.backbone
        hs_model, meta = load_model(self.hs_checkpoint, "cls")
        if meta.get("block") != "hs" or meta.get("fused") or meta.get("arch") != backbone.arch:
            raise CheckpointError(f"{self.hs_checkpoint}: expected an unfused 'hs' classifier of arch {backbone.arch!r}, "
                                  f"got block {meta.get('block')!r}, arch {meta.get('arch')!r}")
        if backbone.block != "repopt":
            raise ValueError(f"RepOptimizerConstructor trains block 'repopt', the backbone has {backbone.block!r}")
        scales = extract_scales(hs_model)  # keys "stages.N.M": the trunk's own module names
        if backbone.init_cfg is None:
            init_target_from_scales(backbone, scales)
        cfg = dict(self.cfg)
        opt = dict(cfg.pop("optimizer"))
        if opt.pop("type") != "SGD":
            raise ValueError("RepOptimizerConstructor: optimizer type must be 'SGD'")
        wd = opt.pop("weight_decay", 0.0)
        optimizer = RepOptimizerSGD(param_groups(model, wd), opt.pop("lr"), opt.pop("momentum", 0.9), wd,
                                    opt.pop("nesterov", False), masks=gradient_masks(backbone, scales))
        wrapper_type = cfg.pop("type", "OptimWrapper")
        from mmseg.registry import OPTIM_WRAPPERS

        return OPTIM_WRAPPERS.build(dict(type=wrapper_type, optimizer=optimizer, **cfg))


# --- configs -------------------------------------------------------------------------------------

def load_config(path: str | Path, options: dict | None = None) -> Config:
    """``Config.fromfile`` with a clear error naming a missing file; ``options`` merged like --cfg-options."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    cfg = Config.fromfile(str(path))
    if options:
        cfg.merge_from_dict(options)
    return cfg


def config_from_text(text: str) -> Config:
    """The config stored in a checkpoint's metadata (``Config.pretty_text``)."""
    return Config.fromstring(text, ".py")


def build_segmentor(model_cfg: dict) -> nn.Module:
    """An mmseg segmentor from a config's ``model`` dict (registry scope "mmseg")."""
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope("mmseg"):
        return MODELS.build(model_cfg)


# --- deploy: tensor in, logits out ----------------------------------------------------------------

class _LogitsForward(nn.Module):
    """(N, 3, H, W) normalised RGB -> (N, num_classes, H, W) logits of ``segmentor``'s decode head.

    The same computation as mmseg's whole-image ``predict`` without its data preprocessor and
    metas, so quantization, ONNX export and ONNX Runtime see a plain tensor graph.
    """

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.segmentor.decode_head(self.segmentor.extract_feat(x))
        return nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear",
                                         align_corners=self.segmentor.align_corners)


class DeploySegmentorLogits(_LogitsForward):
    """The fused form: backbone re-parameterized, every ConvModule's BN folded (unless fused with
    ``fold_bn=False``), no auxiliary head."""


class SegmentorLogits(_LogitsForward):
    """The train form; ``fuse()`` returns its :class:`DeploySegmentorLogits` (``reparameterize`` calls it).

    ``fuse(fold_bn=False)`` is the QAT form: every BN after a fused conv stays, in the backbone (QARepVGG's
    post-BN) and in the heads' ConvModules alike.
    """

    fuse_takes_fold_bn = True  # reparameterize passes its fold_bn through (layers/rep.py)

    def fuse(self, fold_bn: bool = True) -> DeploySegmentorLogits:
        from ..layers.rep import reparameterize

        segmentor = copy.deepcopy(self.segmentor).eval()
        segmentor.backbone = reparameterize(segmentor.backbone, fold_bn=fold_bn)
        if fold_bn:
            fold_conv_module_bn(segmentor)
        if getattr(segmentor, "auxiliary_head", None) is not None:
            segmentor.auxiliary_head = None  # training-only loss branch
        return DeploySegmentorLogits(segmentor)


def fold_conv_module_bn(model: nn.Module) -> int:
    """Fold the BN of every mmcv ``ConvModule`` (conv -> norm -> act) into its conv, in place (eval mode).

    An integer kernel needs ``DQ -> Conv -> Q``: a BN left between conv and quantizer keeps the
    head's convs float in ONNX Runtime. Returns the number of folded modules.
    """
    from mmcv.cnn import ConvModule
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for m in model.modules():
        if isinstance(m, ConvModule) and m.with_norm and isinstance(m.norm, nn.modules.batchnorm._BatchNorm) \
                and m.order.index("norm") == m.order.index("conv") + 1 and isinstance(m.conv, nn.Conv2d):
            m.conv = fuse_conv_bn_eval(m.conv.eval(), m.norm.eval())
            setattr(m, m.norm_name, nn.Identity())
            folded += 1
    return folded


def build_runner(cfg: Config):
    """mmengine's ``Runner`` for ``cfg`` (training, validation, checkpoints, resume, DDP launchers)."""
    from mmengine.runner import Runner

    return Runner.from_cfg(cfg)


class StartIterHook(Hook):
    """Records the iteration training starts from (after a resume) into ``record["iter"]``."""

    priority = "LOWEST"

    def __init__(self, record: dict):
        self.record = record

    def before_train(self, runner) -> None:
        self.record["iter"] = runner.iter


def revert_sync_bn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every SyncBatchNorm (``sync_bn='torch'`` under DDP) back to BatchNorm2d."""
    from mmengine.model import revert_sync_batchnorm

    return revert_sync_batchnorm(copy.deepcopy(model))


# --- evaluation data -----------------------------------------------------------------------------

def preprocess_of(cfg: Config):
    """The :class:`~qarep_dense.data.preprocess.Preprocess` equal to the config's ``SegDataPreProcessor``
    on RGB uint8 input (the loaders below hand out RGB)."""
    from ..data.preprocess import Preprocess

    dp = cfg.model.get("data_preprocessor") or cfg.get("data_preprocessor") or {}
    if not dp.get("bgr_to_rgb", False):
        raise ValueError("the segmentation config's data_preprocessor must set bgr_to_rgb=True (RGB-trained model)")
    return Preprocess(mean=tuple(float(m) / 255 for m in dp["mean"]), std=tuple(float(s) / 255 for s in dp["std"]))


def dataset_cfg(cfg: Config, split: str, data_root: str | Path | None = None) -> dict:
    """The config's test dataset settings (evaluation pipeline) pointed at ``split`` ("train" or "val")."""
    ds = copy.deepcopy(cfg.test_dataloader.dataset.to_dict())
    if split == "train":
        ds["data_prefix"] = copy.deepcopy(cfg.train_dataloader.dataset.data_prefix.to_dict())
    if data_root is not None:
        ds["data_root"] = str(data_root)
    return ds


def collate_seg(items: list[dict]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """mmseg samples -> (uint8 RGB (N, 3, H, W), [ground truth (H, W)]); mmseg loads BGR."""
    images = [item["inputs"] for item in items]
    if len({tuple(im.shape) for im in images}) > 1:
        paths = [item["data_samples"].img_path for item in items]
        raise ValueError(f"images of one evaluation batch differ in size ({paths}); use --batch-size 1")
    gts = [item["data_samples"].gt_sem_seg.data[0] for item in items]
    return torch.stack(images).flip(1), gts


def build_dataset(ds_cfg: dict):
    """An mmseg dataset (e.g. ``CityscapesDataset``) from its config dict, in the "mmseg" registry scope."""
    from mmengine.registry import DefaultScope
    from mmseg.registry import DATASETS

    with DefaultScope.overwrite_default_scope("mmseg"):
        return DATASETS.build(ds_cfg)


def seg_loaders(cfg: Config, data_root: str | Path | None, batch_size: int, workers: int = 0, seed: int = 0):
    """(validation loader, shuffled calibration loader on the train split, dataset metainfo), both
    through the config's evaluation pipeline; the files are checked first (errors name them)."""
    from torch.utils.data import DataLoader

    loaders, meta = [], None
    for split in ("val", "train"):
        ds_cfg = dataset_cfg(cfg, split, data_root)
        check_dataset_files(ds_cfg)
        dataset = build_dataset(ds_cfg)
        meta = meta or dataset.metainfo
        loaders.append(DataLoader(dataset, batch_size, shuffle=split == "train", num_workers=workers,
                                  collate_fn=collate_seg, generator=torch.Generator().manual_seed(seed)))
    return loaders[0], loaders[1], meta


def iou_metric_factory(metainfo: dict, ignore_index: int = 255):
    """A function returning a fresh mmseg ``IoUMetric`` (mIoU) for ``metainfo``'s classes."""
    from mmseg.evaluation import IoUMetric

    def make():
        metric = IoUMetric(iou_metrics=["mIoU"], ignore_index=ignore_index)
        metric.dataset_meta = metainfo
        return metric

    return make


# --- checkpoints of the segmentation task --------------------------------------------------------

def seg_meta(cfg: Config) -> dict:
    """Plain metadata of a segmentation checkpoint: the whole config as text, plus the fields the
    tools compare (arch, block, classes, crop) and the uint8 -> float preprocessing."""
    from ..data.preprocess import Preprocess

    backbone = cfg.model.backbone
    pre: Preprocess = preprocess_of(cfg)
    crop = cfg.get("crop_size")
    return {"task": "seg", "arch": backbone.get("arch"), "block": backbone.get("block"),
            "num_classes": int(cfg.model.decode_head.num_classes), "head": cfg.model.decode_head.type,
            "image_size": list(crop) if crop else None, "fused": False, "fold_bn": True,
            "preprocess": pre.as_dict(), "data_root": cfg.get("data_root"), "mmseg_config": cfg.pretty_text}


def model_from_meta(meta: dict) -> SegmentorLogits:
    """The train-form :class:`SegmentorLogits` a segmentation checkpoint's metadata describes."""
    cfg = config_from_text(meta["mmseg_config"])
    model_cfg = cfg.model.to_dict()
    model_cfg["backbone"]["init_cfg"] = None  # weights come from the checkpoint, not the pretrained file
    return SegmentorLogits(build_segmentor(model_cfg))


__all__ = ["POINT_SAMPLE_ADAPTED", "PACKAGE_LOOKUP_PATCHED", "MMENGINE_CHECKPOINT_GLOBALS", "allow_mmengine_checkpoints", "QARepVGGBackbone",
           "CheckSegLabels", "check_dataset_files", "RepOptimizerConstructor", "load_config", "config_from_text",
           "build_segmentor", "build_runner", "revert_sync_bn", "StartIterHook", "SegmentorLogits", "DeploySegmentorLogits", "fold_conv_module_bn",
           "preprocess_of", "dataset_cfg", "collate_seg", "build_dataset", "seg_loaders", "iou_metric_factory", "seg_meta",
           "model_from_meta"]
