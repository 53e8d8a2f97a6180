"""Segmentation through mmseg 1.x: the backbone contract, heads, fusion, configs, checkpoints, data checks."""
from __future__ import annotations

import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import randomize_bn
from qarep_dense.engine.checkpoint import CheckpointError, save_checkpoint
from qarep_dense.layers import BLOCK_TYPES
from qarep_dense.layers.rep import reparameterize
from qarep_dense.models.classifier import build_classifier
from qarep_dense.models.zoo import classifier_arch

mm = pytest.importorskip("qarep_dense.integrations.mmseg")
pytestmark = pytest.mark.usefixtures("one_thread")  # OpenMP spin-waits crawl on shared cores
ROOT = Path(__file__).resolve().parents[1]


def backbone(block: str = "qarepvgg", **kwargs) -> nn.Module:
    from mmseg.registry import MODELS

    return MODELS.build(dict(type="QARepVGGBackbone", arch="test", block=block, **kwargs))


def segmentor(head: str, output_stride: int = 32, block: str = "qarepvgg") -> nn.Module:
    """A tiny EncoderDecoder on the "test" trunk (widths 8/8/16/32/64)."""
    bn = dict(type="BN", requires_grad=True)
    if head == "FCNHead":
        decode = dict(type="FCNHead", in_channels=64, in_index=3, channels=16, num_convs=2, concat_input=True,
                      num_classes=19, norm_cfg=bn)
    else:
        decode = dict(type="DepthwiseSeparableASPPHead", in_channels=64, in_index=3, channels=16, dilations=(1, 2, 3),
                      c1_in_channels=8, c1_channels=8, num_classes=19, norm_cfg=bn)
    return mm.build_segmentor(dict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                               bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=(48, 80)),
        backbone=dict(type="QARepVGGBackbone", arch="test", block=block, output_stride=output_stride),
        decode_head=decode,
        auxiliary_head=dict(type="FCNHead", in_channels=32, in_index=2, channels=8, num_convs=1, concat_input=False,
                            num_classes=19, norm_cfg=bn, loss_decode=dict(type="CrossEntropyLoss", loss_weight=0.4)),
        train_cfg=dict(), test_cfg=dict(mode="whole")))


# --- backbone contract ----------------------------------------------------------------------------

@pytest.mark.parametrize("output_stride", [32, 16, 8])
@pytest.mark.parametrize("block", sorted(BLOCK_TYPES))
def test_backbone_outputs_match_what_it_declares(block, output_stride):
    if BLOCK_TYPES[block].avg_pool and output_stride < 32:  # YOLOv6's V2 block: the 3x3 avg-pool branch
        with pytest.raises(ValueError, match="cannot be dilated"):  # would not fuse into a dilated kernel
            backbone(block, output_stride=output_stride)
        return
    net = backbone(block, output_stride=output_stride).eval()
    h, w = 45, 70  # odd sizes: each stride-2 stage rounds up
    feats = net(torch.randn(2, 3, h, w))
    assert isinstance(feats, tuple) and len(feats) == len(net.out_channels) == len(net.out_strides) == 4
    assert net.out_strides == {32: (4, 8, 16, 32), 16: (4, 8, 16, 16), 8: (4, 8, 8, 8)}[output_stride]
    for f, c, s in zip(feats, net.out_channels, net.out_strides):
        assert f.shape == (2, c, math.ceil(h / s), math.ceil(w / s))


def test_backbone_out_indices_and_strict_errors():
    net = backbone(out_indices=(0, 2), strides=(2, 2, 2, 1, 1), dilations=(1, 1, 1, 2, 4))
    assert net.out_channels == (8, 16) and net.out_strides == (2, 8)
    assert [f.shape[1] for f in net(torch.randn(1, 3, 32, 32))] == [8, 16]
    with pytest.raises(ValueError, match="unknown classifier arch 'Z9'"):
        mm.QARepVGGBackbone(arch="Z9")
    with pytest.raises(ValueError, match="nope"):
        backbone("nope")
    with pytest.raises(ValueError, match="output_stride must be one of"):
        backbone(output_stride=4)
    with pytest.raises(ValueError, match="out_indices"):
        backbone(out_indices=(3, 1))


def test_classifier_and_trunk_share_state_dict_keys():
    cls_keys = {k for k in build_classifier("test", "repvgg", 5).state_dict() if not k.startswith("fc.")}
    assert cls_keys == set(backbone("repvgg").state_dict())


# --- heads and fusion -----------------------------------------------------------------------------

@pytest.mark.parametrize("head", ["FCNHead", "DepthwiseSeparableASPPHead"])
def test_head_forward_loss_backward(head):
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData

    model = segmentor(head).train()
    images = torch.randint(0, 256, (2, 3, 48, 80), dtype=torch.uint8).float()
    samples = []
    for _ in range(2):
        s = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 19, (1, 48, 80))))
        s.set_metainfo(dict(img_shape=(48, 80), ori_shape=(48, 80), pad_shape=(48, 80)))
        samples.append(s)
    data = model.data_preprocessor({"inputs": list(images), "data_samples": samples}, training=True)
    losses = model.loss(data["inputs"], data["data_samples"])
    assert set(losses) >= {"decode.loss_ce", "aux.loss_ce"}
    total = sum(v for k, v in losses.items() if "loss" in k)
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.stages[0][0].branch_3x3.conv.weight.grad.abs().sum() > 0
    out = mm.SegmentorLogits(model).eval()(torch.randn(1, 3, 48, 80))
    assert out.shape == (1, 19, 48, 80)


@pytest.mark.parametrize("head", ["FCNHead", "DepthwiseSeparableASPPHead"])
def test_decode_head_loss_is_mmseg_decode_heads_own(head):
    """The QAT loss of a fused segmentor equals the decode head's term of mmseg's training loss, ignored pixels
    included; ground truths of another size than the input are scored through mmseg's resize too."""
    from mmengine.config import Config
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    torch.manual_seed(0)
    model = segmentor(head).train()
    head_cfg = dict(ignore_index=255, align_corners=False,
                    loss_decode=[dict(type="CrossEntropyLoss", loss_weight=1.0),
                                 dict(type="DiceLoss", loss_weight=0.5, loss_name="loss_dice")])
    model.decode_head.loss_decode = nn.ModuleList([mm.build_segmentor(c) for c in head_cfg["loss_decode"]])
    loss = mm.decode_head_loss(Config(dict(model=dict(decode_head=head_cfg))))
    x = torch.randn(2, 3, 48, 80)
    for size in ((48, 80), (24, 40)):
        gts = [torch.randint(0, 19, size) for _ in range(2)]
        gts[0][:4] = 255  # ignored rows
        samples = []
        for gt in gts:
            sample = SegDataSample(gt_sem_seg=PixelData(data=gt[None]))
            sample.set_metainfo(dict(img_shape=(48, 80)))
            samples.append(sample)
        head_logits = model.decode_head(model.extract_feat(x))
        theirs = model.decode_head.loss_by_feat(head_logits, samples)
        expected = theirs["loss_ce"] + theirs["loss_dice"]
        upsampled = nn.functional.interpolate(head_logits, size=(48, 80), mode="bilinear", align_corners=False)
        if size == (48, 80):  # what SegmentorLogits returns, scored at the labels' size: mmseg's own number
            assert loss(upsampled, gts).item() == pytest.approx(expected.item(), rel=1e-5)
        else:  # labels smaller than the logits: resized as mmseg resizes them, sample by sample
            assert loss(head_logits, gts).item() == pytest.approx(expected.item(), rel=1e-5)
    small, large = torch.randint(0, 19, (24, 40)), torch.randint(0, 19, (48, 80))  # one batch, two label sizes
    each = (loss(upsampled[:1], [small]) + loss(upsampled[1:], [large])) / 2
    assert loss(upsampled, [small, large]).item() == pytest.approx(each.item(), rel=1e-6)


@pytest.mark.parametrize("output_stride", [32, 8])
@pytest.mark.parametrize("head", ["FCNHead", "DepthwiseSeparableASPPHead"])
@pytest.mark.parametrize("block", ["qarepvgg", "repvgg"])
def test_fused_segmentor_gives_the_same_logits(head, output_stride, block):
    model = mm.SegmentorLogits(randomize_bn(segmentor(head, output_stride, block))).double().eval()
    deploy = reparameterize(model)
    assert isinstance(deploy, mm.DeploySegmentorLogits) and deploy.segmentor.auxiliary_head is None
    kinds = {type(m).__name__ for m in deploy.modules()}
    assert not kinds & {"RepVGGBlock", "BatchNorm2d", "SyncBatchNorm"}, kinds  # every BN folded
    x = torch.randn(2, 3, 48, 80, dtype=torch.float64)
    with torch.no_grad():
        ref, out = model(x), deploy(x)
    assert (ref - out).abs().max().item() < 1e-9
    assert (model(x) - ref).abs().max().item() == 0  # the train form was not touched


@pytest.mark.parametrize("block", ["qarepvgg", "repvgg"])
def test_fused_segmentor_keeps_every_bn_with_fold_bn_false(block):
    model = mm.SegmentorLogits(randomize_bn(segmentor("DepthwiseSeparableASPPHead", 8, block))).double().eval()
    folded, qat_form = reparameterize(model), reparameterize(model, fold_bn=False)
    bns = [m for m in qat_form.modules() if isinstance(m, nn.BatchNorm2d)]
    heads = [m for m in qat_form.segmentor.decode_head.modules() if isinstance(m, nn.BatchNorm2d)]
    assert heads and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    if block == "qarepvgg":  # its post-BNs stay after the fused convs; RepVGG's branch BNs fold in stage 1
        assert len(bns) > len(heads)
    assert not {type(m).__name__ for m in qat_form.modules()} & {"RepVGGBlock"}
    x = torch.randn(2, 3, 48, 80, dtype=torch.float64)
    with torch.no_grad():
        assert (qat_form(x) - model(x)).abs().max().item() < 1e-9


# --- configs --------------------------------------------------------------------------------------

CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_loads_and_heads_fit_the_backbone(path):
    cfg = mm.load_config(path)
    if "_base_" in path.parts or "model" not in cfg:
        return
    b = cfg.model.backbone
    assert b.type == "QARepVGGBackbone"
    widths = classifier_arch(b.arch).widths
    out_indices = b.get("out_indices", (1, 2, 3, 4))
    for head in (cfg.model.decode_head, cfg.model.get("auxiliary_head")):
        if head is None:
            continue
        if isinstance(head.in_index, (list, tuple)):  # input_transform "resize_concat": one width per input
            assert list(head.in_channels) == [widths[out_indices[i]] for i in head.in_index], (path.name, head.type)
        else:
            assert head.in_channels == widths[out_indices[head.in_index]], (path.name, head.type)
    if cfg.model.decode_head.type == "DepthwiseSeparableASPPHead":
        assert cfg.model.decode_head.c1_in_channels == widths[out_indices[0]]
    if "cityscapes-512x1024" in path.name:  # the paper's recipe
        assert cfg.train_dataloader.batch_size == 2 and "4xb2" in path.name and cfg.sync_bn == "torch"
        assert cfg.optim_wrapper.optimizer.lr == 0.01 and cfg.optim_wrapper.optimizer.weight_decay == 5e-4
        assert cfg.train_cfg.max_iters == (40000 if path.name.startswith("fcn") else 80000)
        assert cfg.model.backbone.output_stride == (8 if "-d8_" in path.name else 32)
        assert cfg.model.backbone.init_cfg.type == "Pretrained"


def test_paper_config_is_the_deeplabv3plus_qarepvgg_row():
    cfg = mm.load_config(ROOT / "configs" / "deeplab_qarep.py")
    assert (cfg.model.decode_head.type, cfg.model.backbone.arch, cfg.model.backbone.block) == \
        ("DepthwiseSeparableASPPHead", "B1g4", "qarepvgg")
    assert cfg.crop_size == (512, 1024) and cfg.param_scheduler[0].type == "PolyLR"


def test_entry_config_is_mmseg_deeplabv3plus_at_output_stride_8():
    """The named entry config is mmseg's DeepLabV3+ model: a dilated backbone (OS 8, dilations 2 and 4 in the
    last two stages) and mmseg's own ASPP dilations; the OS-32 variant's ASPP dilations fit 32."""
    import mmseg
    from mmengine.config import Config

    mmseg_model = Config.fromfile(Path(mmseg.__file__).parent / ".mim/configs/_base_/models/deeplabv3plus_r50-d8.py").model
    cfg = mm.load_config(ROOT / "configs" / "deeplab_qarep.py")
    trunk = mm.QARepVGGBackbone(**{k: v for k, v in cfg.model.backbone.items() if k not in ("type", "init_cfg")})
    assert trunk.out_strides == (4, 8, 8, 8)
    for stage, dilation in ((trunk.stages[3], 2), (trunk.stages[4], 4)):
        assert {m.dilation for m in stage.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)} == \
            {(dilation, dilation)}
    assert tuple(cfg.model.decode_head.dilations) == tuple(mmseg_model.decode_head.dilations) == (1, 12, 24, 36)
    assert (mmseg_model.backbone.strides, mmseg_model.backbone.dilations) == \
        ((1, 2, 1, 1), (1, 1, 2, 4))  # mmseg's ResNet-d8: the last two stages dilated by 2 and 4, as ours
    os32 = mm.load_config(ROOT / "configs/seg/deeplabv3plus_qarepvgg-b1g4_4xb2-80k_cityscapes-512x1024.py")
    assert os32.model.backbone.output_stride == 32  # the same reach in input pixels as mmseg's at output stride 8:
    assert [d * 32 for d in os32.model.decode_head.dilations[1:]] == [d * 8 for d in mmseg_model.decode_head.dilations[1:]]


# --- checkpoints ----------------------------------------------------------------------------------

def test_mmengine_checkpoint_loads_weights_only(tmp_path):
    from mmengine.logging import MessageHub

    hub = MessageHub.get_instance("qarep-test-hub")
    hub.update_scalar("train/loss", 1.5)
    hub.update_info("eta", np.float64(3.0))
    path = tmp_path / "iter_1.pth"
    torch.save({"meta": {"iter": 1, "eta": np.float64(2.0)}, "message_hub": hub.state_dict(),
                "state_dict": {"w": torch.ones(2)}}, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["message_hub"]["log_scalars"]["train/loss"].mean() == 1.5


class _Evil:
    def __init__(self, reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


@pytest.mark.parametrize("payload", [
    (subprocess.call, (["true"],)),  # a plain code-execution gadget
    (getattr, (mm.HistoryBuffer, "__init__")),  # getattr is allowed only for HistoryBuffer's statistics
])
def test_crafted_pickle_is_refused(tmp_path, payload):
    path = tmp_path / "evil.pth"
    torch.save({"meta": _Evil(payload)}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def _cls_checkpoint(path: Path, block: str = "qarepvgg", arch: str = "test", drop: str | None = None) -> nn.Module:
    model = randomize_bn(build_classifier(arch, block, 5))
    state = {k: v for k, v in model.state_dict().items() if k != drop}
    save_checkpoint(path, state, {"task": "cls", "arch": arch, "block": block, "num_classes": 5, "fused": False})
    return model


def test_pretrained_backbone_loads_our_classification_checkpoint_strictly(tmp_path):
    model = _cls_checkpoint(tmp_path / "cls.pt")
    net = backbone(init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "cls.pt")))
    net.init_weights()
    for k, v in net.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    missing = next(k for k in model.state_dict() if k.startswith("stages.1.") and k.endswith("running_var"))
    _cls_checkpoint(tmp_path / "partial.pt", drop=missing)
    with pytest.raises(CheckpointError, match=r"partial\.pt.*missing: " + missing.replace(".", r"\.")):
        backbone(init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "partial.pt"))).init_weights()
    _cls_checkpoint(tmp_path / "rep.pt", block="repvgg")
    with pytest.raises(CheckpointError, match="block 'repvgg' does not match"):
        backbone(init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "rep.pt"))).init_weights()


# --- data -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from qarep_dense.data.synthetic.cityscapes import generate_cityscapes

    return generate_cityscapes(tmp_path_factory.mktemp("city"), num_train=3, num_val=2, size=(64, 128), seed=3)


def _dataset_cfg(root: Path, split: str = "val") -> dict:
    return dict(type="CityscapesDataset", data_root=str(root),
                data_prefix=dict(img_path=f"leftImg8bit/{split}", seg_map_path=f"gtFine/{split}"),
                pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"),
                          dict(type="CheckSegLabels"), dict(type="PackSegInputs")])


def test_synthetic_scenes_are_cityscapes_and_deterministic(scenes, tmp_path):
    from qarep_dense.data.synthetic.cityscapes import generate_cityscapes, street_scene

    dataset = mm.build_dataset(_dataset_cfg(scenes, "train"))
    assert len(dataset) == 3
    sample = dataset[0]
    gt = sample["data_samples"].gt_sem_seg.data
    assert sample["inputs"].shape == (3, 64, 128) and gt.shape == (1, 64, 128)
    values = set(torch.unique(gt).tolist())
    assert values <= set(range(19)) | {255} and len(values & set(range(19))) >= 5
    a = street_scene(64, 128, np.random.default_rng([3, 0, 0]))
    b = street_scene(64, 128, np.random.default_rng([3, 0, 0]))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # never writes into (or deletes) a folder it did not write
    foreign = tmp_path / "real"
    (foreign / "leftImg8bit").mkdir(parents=True)
    (foreign / "leftImg8bit" / "mine.png").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="leftImg8bit"):
        generate_cityscapes(foreign, 1, 1, (64, 128))
    assert (foreign / "leftImg8bit" / "mine.png").read_bytes() == b"x"


def test_bad_data_fails_naming_the_file(scenes, tmp_path):
    import shutil

    import cv2

    with pytest.raises(FileNotFoundError, match="no_such_root"):
        mm.check_dataset_files(_dataset_cfg(tmp_path / "no_such_root"))
    assert mm.check_dataset_files(_dataset_cfg(scenes)) == 2
    broken = tmp_path / "broken"
    shutil.copytree(scenes, broken)
    label = sorted((broken / "gtFine" / "val").rglob("*.png"))[0]
    image_name = label.name.replace("_gtFine_labelTrainIds.png", "_leftImg8bit.png")
    cv2.imwrite(str(label), np.full((64, 128), 33, np.uint8))  # a labelIds map by mistake
    with pytest.raises(ValueError, match=rf"{label.name}: label ids \[33\]"):
        mm.build_dataset(_dataset_cfg(broken))[0]
    label.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{image_name}: image has no label file"):
        mm.check_dataset_files(_dataset_cfg(broken))


def test_import_of_the_seg_task_loads_no_mm_package():
    code = ("import sys, qarep_dense, qarep_dense.tasks.segmentation, qarep_dense.evaluation.segmentation, "
            "qarep_dense.data.synthetic.cityscapes, qarep_dense.integrations; "
            "print([m for m in ('mmengine', 'mmseg', 'mmcv') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_repoptimizer_constructor_masks_the_backbone(tmp_path):
    from qarep_dense.engine.checkpoint import CheckpointError
    from qarep_dense.optim.repopt import RepOptimizerSGD

    hs = randomize_bn(build_classifier("test", "hs", 5))
    save_checkpoint(tmp_path / "hs.pt", hs.state_dict(),
                    {"task": "cls", "arch": "test", "block": "hs", "num_classes": 5, "fused": False})
    model = segmentor("FCNHead", block="repopt")
    build = mm.RepOptimizerConstructor(
        dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=5e-4)),
        dict(hs_checkpoint=str(tmp_path / "hs.pt")))
    assert not hasattr(mm.registrations, "_MODEL_LOADER")  # no loader injected from above: it reads the file itself
    wrapper = build(model)
    assert isinstance(wrapper.optimizer, RepOptimizerSGD)
    convs = [m.conv.weight for m in model.backbone.modules() if type(m).__name__ == "ConvBNAct"]
    assert len(wrapper.optimizer.masks) == len(convs) == sum(1 for m in hs.modules()
                                                             if type(m).__name__ == "LinearAddBlock")
    assert all(p in wrapper.optimizer.masks for p in convs)
    with pytest.raises(ValueError, match="trains block 'repopt'"):
        build(segmentor("FCNHead", block="qarepvgg"))
    save_checkpoint(tmp_path / "plain.pt", hs.state_dict(),
                    {"task": "cls", "arch": "test", "block": "qarepvgg", "num_classes": 5, "fused": False})
    plain = mm.RepOptimizerConstructor(dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.01)),
                                       dict(hs_checkpoint=str(tmp_path / "plain.pt")))
    with pytest.raises(CheckpointError, match=r"paramwise_cfg.hs_checkpoint .*plain.pt: expected an unfused Hyper"):
        plain(segmentor("FCNHead", block="repopt"))


def test_channels_last_hook_relays_the_weights_and_keeps_the_parameters():
    """ChannelsLastHook: the optimizer's parameter objects stay, the 3x3 weights are channels-last afterwards,
    and the segmentor computes the same logits."""
    from types import SimpleNamespace

    from mmseg.registry import HOOKS

    torch.manual_seed(0)
    model = segmentor("FCNHead").eval()
    randomize_bn(model)
    params = list(model.parameters())
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        before = model(x, mode="tensor")
    HOOKS.build(dict(type="ChannelsLastHook")).before_train(SimpleNamespace(model=model))
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))
    kernels = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert kernels and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                           for w in kernels)
    with torch.no_grad():
        after = model(x, mode="tensor")
    # channels-last kernels sum in another order: float rounding relative to the logits' scale (about 100 here)
    assert ((after - before).abs().max() / before.abs().max()).item() < 1e-5
