"""Checkpoints are atomic, load with weights_only=True, and fail loudly on bad files."""
import pytest
import torch

from qarep_dense.engine import CheckpointError, load_checkpoint, save_checkpoint
from qarep_dense.layers import reparameterize
from qarep_dense.models import build_classifier
from qarep_dense.tasks.registry import load_model

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


class _Payload:
    """A pickled object whose loading would run code: what weights_only=True exists to refuse."""

    def __reduce__(self):
        import os

        return (os.getcwd, ())


def test_unsafe_file_is_refused_without_torch_advice_to_disable_the_check(tmp_path):
    torch.save({"format": "qarep-dense/1", "model": {}, "extra": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "evil.pt")
    message = str(err.value)
    assert "evil.pt: refused as unsafe" in message and "pickled Python objects" in message
    assert "weights_only=False" not in message and "will likely succeed" not in message
    assert err.value.__cause__ is None and err.value.__suppress_context__  # torch's advice not chained either


def test_stale_temp_files_of_our_writes_are_removed_and_only_those(tmp_path):
    import os
    import time

    old = time.time() - 3600
    stale = tmp_path / ".last.pt.k3j9x_2a.tmp"           # a write killed an hour ago
    fresh = tmp_path / ".last.pt.zz81mmq0.tmp"           # a write that may still be running
    other = tmp_path / ".best.pt.k3j9x_2a.tmp"           # another checkpoint's temp file
    foreign = tmp_path / ".last.pt.user-notes.tmp"       # not our name pattern
    for path in (stale, fresh, other, foreign):
        path.write_bytes(b"partial")
    for path in (stale, other, foreign):
        os.utime(path, (old, old))
    save_checkpoint(tmp_path / "last.pt", {}, META)
    assert not stale.exists()
    assert fresh.exists() and other.exists() and foreign.exists()
    assert load_checkpoint(tmp_path / "last.pt")["meta"] == META


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoint_mode_follows_the_umask(tmp_path, umask, mode):
    import os
    import stat

    previous = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "a.pt", {}, META)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == mode  # mkstemp alone gives 0600 whatever the umask


def test_load_hs_model_is_the_one_hyper_search_loader(tmp_path):
    """Classification and detection recipes and the mmseg RepOptimizer constructor read 'hs' models with it."""
    from qarep_dense.engine.checkpoint import CheckpointError, load_hs_model, save_checkpoint
    from qarep_dense.models import build_classifier, build_detector

    hs = build_classifier("test", "hs", 3, stem_stride=1)
    meta = {"task": "cls", "arch": "test", "block": "hs", "num_classes": 3, "stem_stride": 1, "fused": False}
    path = save_checkpoint(tmp_path / "hs.pt", hs.state_dict(), meta)
    model = load_hs_model(path, "cls", arch="test")
    assert not model.training and torch.equal(model.state_dict()["fc.weight"], hs.state_dict()["fc.weight"])
    det = save_checkpoint(tmp_path / "hs_det.pt", build_detector("test", "hs", 2).state_dict(),
                          {"task": "det", "scale": "test", "block": "hs", "num_classes": 2, "fused": False})
    assert load_hs_model(det, "det", scale="test").num_classes == 2
    for bad, args, match in [(path, ("cls",), {"arch": "A0"}), (det, ("cls",), {"arch": "test"}),
                             (save_checkpoint(tmp_path / "qa.pt", build_classifier("test", "qarepvgg", 3, stem_stride=1)
                                              .state_dict(), {**meta, "block": "qarepvgg"}), ("cls",), {"arch": "test"})]:
        with pytest.raises(CheckpointError, match=f"repopt.hs_checkpoint {bad}: expected an unfused Hyper-Search"):
            load_hs_model(bad, *args, **match)
