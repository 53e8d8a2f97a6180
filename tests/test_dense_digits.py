"""End to end on the digit canvases: a classifier's stages start a detector and a segmentor, which train,
fuse and reload (tiny configs; marked slow)."""
from __future__ import annotations

import pytest
import torch

from qarep_dense.config import load_config
from qarep_dense.engine.checkpoint import load_checkpoint, save_checkpoint
from qarep_dense.models.classifier import build_classifier
from qarep_dense.tasks.registry import load_fused
from support import REPO as ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cls") / "last.pt"
    model = build_classifier("test", "qarepvgg", 10, stem_stride=1)
    save_checkpoint(path, model.state_dict(), {"task": "cls", "arch": "test", "block": "qarepvgg", "num_classes": 10,
                                               "fused": False})
    return path, model.state_dict()


def test_detector_from_a_classifier_trains_fuses_and_reloads(tmp_path, classifier):
    from qarep_dense.tasks.detection import DetConfig, train

    path, state = classifier
    cfg = load_config(ROOT / "configs/det/digits_canvas_test.toml", DetConfig,
                      [f"data.root={tmp_path / 'data'}", f"model.backbone_init={path}"])
    results = train(cfg, tmp_path / "run", device="cpu")
    assert 0.0 <= results["deploy"]["AP"] <= 1.0
    meta = load_checkpoint(tmp_path / "run" / "last.pt")["meta"]
    assert (meta["backbone"], meta["arch"], meta["stem_stride"]) == ("trunk", "test", 2)
    fused, fused_meta = load_fused(tmp_path / "run" / "deploy.pt", "det")
    assert fused_meta["fused"] and fused(torch.zeros(1, 3, 32, 32))[0].shape[-1] == 10


def test_segmentor_from_a_classifier_loads_its_stages(tmp_path, classifier):
    from qarep_dense.tasks.segmentation import train

    path, state = classifier
    (tmp_path / "data").mkdir()
    config = ROOT / "configs/seg/fcn_qarepvgg-test_1xb4-2it_digits-canvas-32x32.py"
    results = train(config, tmp_path / "run", cfg_options={"model.backbone.init_cfg.checkpoint": str(path),
                                                           "optim_wrapper.optimizer.lr": 1e-9},
                    data_root=tmp_path / "data", progress=False)
    assert 0.0 <= results["deploy"]["mIoU"] <= 100.0 and (tmp_path / "data" / "gtFine" / "val").is_dir()
    trained = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    # lr ~0: the trunk's weights are the classifier's (the init loaded), not a fresh initialisation
    key = "stages.3.0.branch_3x3.conv.weight"
    assert torch.allclose(trained[f"segmentor.backbone.{key}"], state[key], atol=1e-6)
