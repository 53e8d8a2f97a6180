"""Checkpoints are atomic, load with weights_only=True, and fail loudly on bad files."""
import pytest
import torch

from qarep_dense.engine import CheckpointError, load_checkpoint, save_checkpoint
from qarep_dense.layers import reparameterize
from qarep_dense.models import build_classifier
from qarep_dense.models.factory import load_model

META = {"task": "cls", "arch": "test", "block": "qarepvgg", "num_classes": 3, "stem_stride": 1, "fused": False}


def test_round_trip_train_and_deploy_forms(tmp_path, bn_randomizer):
    model = bn_randomizer(build_classifier("test", "qarepvgg", 3, stem_stride=1)).eval()
    save_checkpoint(tmp_path / "a.pt", model.state_dict(), META, epoch=3, rng=torch.get_rng_state())
    loaded, meta = load_model(tmp_path / "a.pt")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    deploy = reparameterize(model)
    save_checkpoint(tmp_path / "d.pt", deploy.state_dict(), {**META, "fused": True, "fold_bn": True})
    loaded_deploy, meta = load_model(tmp_path / "d.pt")
    assert meta["fused"] is True
    with torch.no_grad():
        assert torch.equal(loaded_deploy(x), deploy(x))
    assert load_checkpoint(tmp_path / "a.pt")["epoch"] == 3


def test_truncated_missing_and_foreign_files(tmp_path):
    model = build_classifier("test", "qarepvgg", 3)
    path = save_checkpoint(tmp_path / "a.pt", model.state_dict(), META)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: cannot read checkpoint \(truncated"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="nope.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a qarep-dense checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_meta_that_does_not_match_weights(tmp_path):
    model = build_classifier("test", "repvgg", 3)
    save_checkpoint(tmp_path / "a.pt", model.state_dict(), META)  # meta says qarepvgg
    with pytest.raises(CheckpointError, match="a.pt does not fit the model"):
        load_model(tmp_path / "a.pt")


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    model = build_classifier("test", "qarepvgg", 3)
    path = save_checkpoint(tmp_path / "last.pt", model.state_dict(), META, epoch=1)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        save_checkpoint(path, model.state_dict(), META, epoch=2, junk=Boom())
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp files left behind
