"""YOLOv6 release checkpoints: a fixture with YOLOv6's exact module layout, read by the restricted
unpickler, converted exactly; payloads hidden in the pickle do nothing.

The fixture below is written from YOLOv6 0.2.0's module structure (attribute names, branch order,
``initialize_weights`` BN settings) and 0.4.0's QARepVGGBlock / QARepVGGBlockV2; it is pickled
under YOLOv6's module paths, as a release file is, without YOLOv6 installed.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import types
from collections import OrderedDict

import pytest
import torch
from torch import nn

from conftest import randomize_bn
from qarep_dense.convert import ConversionError, convert_state
from qarep_dense.tasks.registry import convert_checkpoint
from qarep_dense.convert.common import RBR_BLOCKS, fit_state, rename_state, rule
from qarep_dense.convert.unpickle import Record, module_state, read_pickled_checkpoint
from qarep_dense.layers import make_block, reparameterize
from qarep_dense.models.detector import build_detector
from qarep_dense.tasks.registry import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


# --- a YOLOv6-layout network (our own code, YOLOv6's names and numerics) ---------------------------

def _conv_bn(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                                     bn=nn.BatchNorm2d(cout)))


class _Block(nn.Module):
    kind = "repvgg"

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        same = cin == cout and stride == 1
        self.nonlinearity, self.se = nn.ReLU(), nn.Identity()
        self.rbr_dense = _conv_bn(cin, cout, 3, stride)
        if self.kind == "repvgg":
            self.rbr_identity = nn.BatchNorm2d(cin) if same else None
            self.rbr_1x1 = _conv_bn(cin, cout, 1, stride)
        else:  # QARepVGG: plain 1x1, plain identity, post-BN; V2 adds a 3x3 average pool
            self.rbr_identity = nn.Identity() if same else None
            self.rbr_1x1 = nn.Conv2d(cin, cout, 1, stride, bias=False)
            self.bn = nn.BatchNorm2d(cout)
            if self.kind == "qarepvgg_v2":
                self.rbr_avg = nn.AvgPool2d(3, stride, 1) if same else None

    def forward(self, x):
        y = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            y = y + self.rbr_identity(x)
        if getattr(self, "rbr_avg", None) is not None:
            y = y + self.rbr_avg(x)
        if hasattr(self, "bn"):
            y = self.bn(y)
        return self.nonlinearity(self.se(y))


class RepVGGBlock(_Block):
    kind = "repvgg"


class QARepVGGBlock(_Block):
    kind = "qarepvgg"


class QARepVGGBlockV2(_Block):
    kind = "qarepvgg_v2"


class RealVGGBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.relu, self.se = nn.ReLU(), nn.Identity()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.relu(self.se(self.bn(self.conv(x))))


class ScaleLayer(nn.Module):
    def __init__(self, channels: int, init: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), init))

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1)


class LinearAddBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.relu, self.se = nn.ReLU(), nn.Identity()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.scale_conv = ScaleLayer(cout)
        self.conv_1x1 = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        self.scale_1x1 = ScaleLayer(cout)
        if cin == cout and stride == 1:
            self.scale_identity = ScaleLayer(cout)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        y = self.scale_conv(self.conv(x)) + self.scale_1x1(self.conv_1x1(x))
        if hasattr(self, "scale_identity"):
            y = y + self.scale_identity(x)
        return self.relu(self.se(self.bn(y)))


BLOCK_CLASSES = {"repvgg": RepVGGBlock, "qarepvgg": QARepVGGBlock, "qarepvgg_v2": QARepVGGBlockV2,
                 "repopt": RealVGGBlock, "hs": LinearAddBlock}


class _ConvBNAct(nn.Module):
    act_type = nn.ReLU

    def __init__(self, cin: int, cout: int, k: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = self.act_type()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class SimConv(_ConvBNAct):
    act_type = nn.ReLU


class Conv(_ConvBNAct):
    act_type = nn.SiLU


class Transpose(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.upsample_transpose = nn.ConvTranspose2d(cin, cout, 2, 2, bias=True)

    def forward(self, x):
        return self.upsample_transpose(x)


class SimSPPF(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.cv1 = SimConv(cin, cin // 2, 1, 1)
        self.cv2 = SimConv(cin // 2 * 4, cout, 1, 1)
        self.m = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat([x, y1, y2, self.m(y2)], 1))


class RepBlock(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, block: type):
        super().__init__()
        self.conv1 = block(cin, cout)
        self.block = nn.Sequential(*(block(cout, cout) for _ in range(n - 1))) if n > 1 else None

    def forward(self, x):
        x = self.conv1(x)
        return x if self.block is None else self.block(x)


class EfficientRep(nn.Module):
    def __init__(self, ch: list[int], rep: list[int], block: type):
        super().__init__()
        self.stem = block(3, ch[0], 2)
        for k in range(2, 6):
            parts = [block(ch[k - 2], ch[k - 1], 2), RepBlock(ch[k - 1], ch[k - 1], rep[k - 1], block)]
            if k == 5:
                parts.append(SimSPPF(ch[4], ch[4]))
            setattr(self, f"ERBlock_{k}", nn.Sequential(*parts))

    def forward(self, x):
        x = self.ERBlock_3(self.ERBlock_2(self.stem(x)))
        c4 = self.ERBlock_4(x)
        return x, c4, self.ERBlock_5(c4)


class RepPANNeck(nn.Module):
    def __init__(self, ch: list[int], rep: list[int], block: type):
        super().__init__()
        self.Rep_p4 = RepBlock(ch[3] + ch[5], ch[5], rep[5], block)
        self.Rep_p3 = RepBlock(ch[2] + ch[6], ch[6], rep[6], block)
        self.Rep_n3 = RepBlock(ch[6] + ch[7], ch[8], rep[7], block)
        self.Rep_n4 = RepBlock(ch[5] + ch[9], ch[10], rep[8], block)
        self.reduce_layer0 = SimConv(ch[4], ch[5], 1, 1)
        self.upsample0 = Transpose(ch[5], ch[5])
        self.reduce_layer1 = SimConv(ch[5], ch[6], 1, 1)
        self.upsample1 = Transpose(ch[6], ch[6])
        self.downsample2 = SimConv(ch[6], ch[7], 3, 2)
        self.downsample1 = SimConv(ch[8], ch[9], 3, 2)

    def forward(self, feats):
        x2, x1, x0 = feats
        fpn0 = self.reduce_layer0(x0)
        f_out0 = self.Rep_p4(torch.cat([self.upsample0(fpn0), x1], 1))
        fpn1 = self.reduce_layer1(f_out0)
        pan2 = self.Rep_p3(torch.cat([self.upsample1(fpn1), x2], 1))
        pan1 = self.Rep_n3(torch.cat([self.downsample2(pan2), fpn1], 1))
        pan0 = self.Rep_n4(torch.cat([self.downsample1(pan1), fpn0], 1))
        return pan2, pan1, pan0


class Detect(nn.Module):
    def __init__(self, ch: list[int], num_classes: int, reg_max: int = 0):
        super().__init__()
        self.proj_conv = nn.Conv2d(reg_max + 1, 1, 1, bias=False)
        for name in ("stems", "cls_convs", "reg_convs", "cls_preds", "reg_preds"):
            setattr(self, name, nn.ModuleList())
        for c in ch:
            self.stems.append(Conv(c, c, 1, 1))
            self.cls_convs.append(Conv(c, c, 3, 1))
            self.reg_convs.append(Conv(c, c, 3, 1))
            self.cls_preds.append(nn.Conv2d(c, num_classes, 1))
            self.reg_preds.append(nn.Conv2d(c, 4 * (reg_max + 1), 1))
        self.proj = nn.Parameter(torch.linspace(0, reg_max, reg_max + 1), requires_grad=False)
        self.proj_conv.weight = nn.Parameter(self.proj.view(1, reg_max + 1, 1, 1).clone(), requires_grad=False)
        self.stride = torch.tensor([8, 16, 32])  # a plain attribute, as in YOLOv6

    def forward(self, feats):
        cls_out, reg_out = [], []
        for i, x in enumerate(feats):
            x = self.stems[i](x)
            cls_out.append(self.cls_preds[i](self.cls_convs[i](x)).flatten(2).transpose(1, 2))
            reg_out.append(self.reg_preds[i](self.reg_convs[i](x)).flatten(2).transpose(1, 2))
        return torch.cat(cls_out, 1), torch.cat(reg_out, 1)


class Model(nn.Module):
    """YOLOv6 v2-era model; forward returns the raw (cls logits, ltrb) our Detector returns."""

    WIDTHS = {"n": (0.33, 0.25), "t": (0.33, 0.375), "s": (0.33, 0.5), "test": (0.05, 0.125)}

    def __init__(self, scale: str, block: str, num_classes: int = 80):
        super().__init__()
        depth, width = self.WIDTHS[scale]
        base_rep = [1, 6, 12, 18, 6, 12, 12, 12, 12]
        base_ch = [64, 128, 256, 512, 1024, 256, 128, 128, 256, 256, 512]
        rep = [max(round(n * depth), 1) if n > 1 else n for n in base_rep]
        ch = [math.ceil(c * width / 8) * 8 for c in base_ch]
        cls = BLOCK_CLASSES[block]
        self.backbone, self.neck = EfficientRep(ch, rep, cls), RepPANNeck(ch, rep, cls)
        self.detect = Detect([ch[6], ch[8], ch[10]], num_classes)
        self.stride = self.detect.stride
        for m in self.modules():  # YOLOv6's initialize_weights
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = 1e-3, 0.03

    def forward(self, x):
        return self.detect(self.neck(self.backbone(x)))


_Y6_MODULES = {"yolov6.layers.common": [RepVGGBlock, QARepVGGBlock, QARepVGGBlockV2, RealVGGBlock, ScaleLayer,
                                        LinearAddBlock, SimConv, Conv, Transpose, SimSPPF, RepBlock],
               "yolov6.models.efficientrep": [EfficientRep], "yolov6.models.reppan": [RepPANNeck],
               "yolov6.models.effidehead": [Detect], "yolov6.models.yolo": [Model]}


@contextlib.contextmanager
def yolov6_modules():
    """Pickle the fixture under YOLOv6's module paths (fake modules exist only inside the block)."""
    with pytest.MonkeyPatch.context() as mp:
        for package in ("yolov6", "yolov6.layers", "yolov6.models"):
            mp.setitem(sys.modules, package, types.ModuleType(package))
        for mod_name, classes in _Y6_MODULES.items():
            module = types.ModuleType(mod_name)
            for cls in classes:
                mp.setattr(cls, "__module__", mod_name)
                setattr(module, cls.__name__, cls)
            mp.setitem(sys.modules, mod_name, module)
        yield


@pytest.fixture
def yolov6_names():
    with yolov6_modules():
        yield


def _release(scale: str, block: str, seed: int = 0, num_classes: int = 80) -> Model:
    torch.manual_seed(seed)
    model = Model(scale, block, num_classes)
    randomize_bn(model, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ScaleLayer):
                m.weight.uniform_(0.5, 1.5)
        for p in model.detect.parameters():
            if p.requires_grad:  # prediction convs: YOLOv6 zero-inits them; make them matter
                p.normal_(0, 0.2)
    return model.eval()


def _save_release(model: Model, path, **extra) -> None:
    """As YOLOv6's strip_optimizer leaves a release file: the EMA model, half precision, under 'model'."""
    torch.save({"model": model.half(), "ema": None, "optimizer": None, "updates": None, "epoch": 299, **extra}, path)
    model.float()


# --- conversion is exact ----------------------------------------------------------------------------

@pytest.mark.parametrize("scale, block", [("n", "repvgg"), ("t", "repvgg"), ("s", "repvgg"),
                                          ("n", "qarepvgg"), ("n", "qarepvgg_v2"), ("test", "repopt"),
                                          ("test", "hs")])
def test_release_file_converts_exactly(scale, block, tmp_path, yolov6_names):
    ref = _release(scale, block)
    _save_release(ref, tmp_path / "yolov6.pt")
    ref = ref.half().float()  # the values the file holds
    out, meta = convert_checkpoint(tmp_path / "yolov6.pt", tmp_path / "ours.pt", "yolov6")
    assert (meta["scale"], meta["block"], meta["num_classes"]) == (scale, block, 80)
    assert (meta["bn_eps"], meta["bn_momentum"], meta["use_dfl"]) == (1e-3, 0.03, False)
    model, _ = load_model(out, "det")
    payload = torch.load(out, weights_only=True)
    # every YOLOv6 tensor but the two DFL constants has a home, and nothing else is in ours
    assert len(payload["model"]) == len(ref.state_dict()) - 2
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(ref(x), model(x)):
            assert torch.equal(a, b)


def test_yolov6_numerics_need_yolov6_bn_eps(tmp_path, yolov6_names):
    """The same weights under PyTorch's BN defaults (1e-5 / 0.1) give other outputs."""
    ref = _release("n", "repvgg", seed=1)
    with torch.no_grad():
        for m in ref.detect.modules():  # small variances, where eps matters
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(1e-3, 1e-2)
    _save_release(ref, tmp_path / "yolov6n.pt")
    state, meta = convert_state(tmp_path / "yolov6n.pt", "yolov6")
    torch_bn = build_detector("n", "repvgg", 80, bn_eps=1e-5, bn_momentum=0.1).eval()
    torch_bn.load_state_dict(state)
    ours = build_detector("n", "repvgg", 80).eval()
    ours.load_state_dict(state)
    x = torch.randn(1, 3, 64, 64)
    ref = ref.half().float()
    with torch.no_grad():
        assert torch.equal(ours(x)[1], ref(x)[1])
        expected = ref(x)[1]
        assert (torch_bn(x)[1] - expected).abs().max() > 1e-2 * expected.abs().max()


def test_plain_state_dict_with_yolov6_names_needs_block(tmp_path):
    ref = _release("test", "qarepvgg_v2")
    torch.save(ref.state_dict(), tmp_path / "sd.pt")  # QARepVGG V1 / V2 have the same keys
    with pytest.raises(ConversionError, match="pass --block"):
        convert_state(tmp_path / "sd.pt", "yolov6")
    state, meta = convert_state(tmp_path / "sd.pt", "yolov6", block="qarepvgg_v2")
    model = build_detector("test", "qarepvgg_v2", 80).eval()
    model.load_state_dict(state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)[0], ref(x)[0])


def test_unknown_yolov6_layout_lists_keys_and_writes_nothing(tmp_path, yolov6_names):
    ref = _release("test", "repvgg")
    ref.neck.extra = SimConv(8, 8, 1, 1)  # a module the v2-era layout does not have
    _save_release(ref, tmp_path / "odd.pt")
    with pytest.raises(ConversionError, match=r"source keys that did not map: neck\.extra\.bn\.bias"):
        convert_checkpoint(tmp_path / "odd.pt", tmp_path / "out.pt", "yolov6")
    assert not (tmp_path / "out.pt").exists()
    with pytest.raises(ConversionError, match="--block 'qarepvgg' but the file's blocks are 'repvgg'"):
        convert_state(tmp_path / "odd.pt", "yolov6", block="qarepvgg")


# --- the restricted unpickler -------------------------------------------------------------------

class _Payload:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_payloads_in_the_pickle_do_nothing(tmp_path, yolov6_names):
    marker, keep = tmp_path / "pwned", tmp_path / "keep"
    keep.write_text("still here")
    ref = _release("test", "repvgg")
    _save_release(ref, tmp_path / "evil.pt",
                  a=_Payload(os.system, f"touch {marker}"),
                  b=_Payload(exec, f"open({str(marker)!r}, 'w').write('x')"),
                  c=_Payload(open, str(marker), "w"),
                  d=_Payload(os.remove, str(keep)))
    ckpt = read_pickled_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists() and keep.read_text() == "still here"
    assert isinstance(ckpt["a"], Record) and ckpt["a"].qualname in ("posix.system", "os.system", "nt.system")
    assert ckpt["b"].qualname == "builtins.exec" and ckpt["c"].qualname.endswith(".open")
    assert ckpt["a"].args == (f"touch {marker}",)
    # the model next to the payloads still converts, exactly, and nothing ran
    out, _ = convert_checkpoint(tmp_path / "evil.pt", tmp_path / "ours.pt", "yolov6")
    assert not marker.exists() and keep.exists()
    model, _ = load_model(out)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)[0], ref.half().float()(x)[0])


def test_module_records_flatten_to_the_state_dict_keys(tmp_path, yolov6_names):
    ref = _release("test", "qarepvgg")
    _save_release(ref, tmp_path / "y.pt")
    state, classes = module_state(read_pickled_checkpoint(tmp_path / "y.pt")["model"])
    expected = ref.half().state_dict()
    assert list(state) == list(expected)
    assert all(torch.equal(state[k], expected[k]) and state[k].dtype == expected[k].dtype for k in state)
    assert classes["backbone.stem"] == "yolov6.layers.common.QARepVGGBlock"
    assert classes[""] == "yolov6.models.yolo.Model"


def test_unreadable_files_give_clear_errors(tmp_path):
    (tmp_path / "plain.pkl").write_bytes(b"\x80\x02}q\x00.")  # a plain (non-zip) pickle
    with pytest.raises(ConversionError, match="plain.pkl: cannot read checkpoint"):
        convert_state(tmp_path / "plain.pkl", "yolov6")
    torch.save({"epoch": 3, "note": "no model here"}, tmp_path / "nomodel.pt")
    with pytest.raises(ConversionError, match="no YOLOv6 EffiDeHead|no pickled model"):
        convert_state(tmp_path / "nomodel.pt", "yolov6")


# --- QARepVGGBlockV2 side by side -------------------------------------------------------------------

@pytest.mark.parametrize("cin, cout, stride", [(8, 8, 1), (8, 8, 2), (8, 16, 1), (8, 16, 2)])
def test_qarepvgg_v2_matches_yolov6_block(cin, cout, stride, bn_randomizer):
    """Average-pool branch only at stride 1 with equal widths, as YOLOv6 0.4.0's QARepVGGBlockV2."""
    theirs = bn_randomizer(QARepVGGBlockV2(cin, cout, stride)).double().eval()
    ours = make_block("qarepvgg_v2", cin, cout, stride).double().eval()
    rules = [rule("", "", block=True)]
    mapped, unmapped = rename_state(theirs.state_dict(), rules, RBR_BLOCKS["qarepvgg_v2"])
    ours.load_state_dict(fit_state(ours, mapped, unmapped, "block"))
    assert (ours.branch_avg is not None) == (cin == cout and stride == 1)
    x = torch.randn(2, cin, 9, 11, dtype=torch.float64)
    with torch.no_grad():
        expected = theirs(x)
        assert (ours(x) - expected).abs().max().item() < 1e-12
        assert (reparameterize(ours)(x) - expected).abs().max().item() < 1e-10
