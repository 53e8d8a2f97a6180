"""The application layer: typed task rows, load_fused (ours and foreign), the selection split, and
quantize_and_check end to end on a tiny synthetic classifier."""
import dataclasses

import pytest
import torch

from qarep_dense.data.imagefolder import make_cls_loader
from qarep_dense.data.preprocess import IMAGENET
from qarep_dense.data.synthetic.imagefolder import generate_imagefolder
from qarep_dense.engine.checkpoint import CheckpointError, save_checkpoint
from qarep_dense.deploy.equivalence import remaining_multi_branch
from qarep_dense.models import build_classifier
from qarep_dense.tasks.base import TaskRow
from qarep_dense.tasks.registry import TASKS, get_task, load_fused, load_model
from qarep_dense.tasks.splits import carve_selection, request_for, sampler_order, task_data

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 16


def _meta(block="qarepvgg"):
    return {"task": "cls", "arch": "test", "block": block, "num_classes": 3, "stem_stride": 1, "fused": False,
            "fold_bn": True, "image_size": SIZE, "preprocess": IMAGENET.as_dict()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tasks")
    root = generate_imagefolder(tmp / "data", num_classes=3, per_class_train=12, per_class_val=4, size=SIZE)
    torch.manual_seed(0)
    model = build_classifier("test", "qarepvgg", 3, stem_stride=1).eval()
    ckpt = save_checkpoint(tmp / "train_form.pt", model.state_dict(), _meta())
    return tmp, root, ckpt, model


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_row_keeps_the_task_contract(name):
    """What callers switch on lives in the row: each field is of its kind, optional ones None or callable."""
    row = TASKS[name]
    assert isinstance(row, TaskRow) and row.name == name and row.title and row.metric
    assert callable(row.build_model) and callable(row.make_evaluator)
    for optional in (row.converted_meta, row.qat_loss, row.read_checkpoint):
        assert optional is None or callable(optional)
    assert (row.converted_meta is None) == (not row.foreign_sources)
    assert row.selection_score in ("kl", "rel_mse")
    assert isinstance(row.free_size_export, bool) and isinstance(row.metric_counts_images, bool)
    assert row.prediction in ("labels", "boxes", "mask") and row.batch_size >= 1 and callable(row.preprocess)
    assert row.prepare_image is None or callable(row.prepare_image)
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.metric = "x"
    with pytest.raises(CheckpointError, match="checkpoint metadata has no"):
        row.build_model({"task": name}, "edited.pt")  # metadata without its keys: named, never a KeyError


def test_every_task_is_a_typed_row():
    assert set(TASKS) == {"cls", "det", "seg"}
    for name, row in TASKS.items():
        assert isinstance(row, TaskRow) and row.name == name
    assert {r.metric for r in TASKS.values()} == {"top1", "AP", "mIoU"}
    with pytest.raises(CheckpointError, match="unknown task 'pose'"):
        get_task("pose")


def test_load_fused_fuses_a_train_form_checkpoint_and_refuses_another_task(setup):
    _, _, ckpt, model = setup
    fused, meta = load_fused(ckpt, "cls")
    assert remaining_multi_branch(model) and not remaining_multi_branch(fused)
    x = torch.randn(2, 3, SIZE, SIZE)
    torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(CheckpointError, match="'cls' .classification. checkpoint, but a det"):
        load_fused(ckpt, "det")


def test_load_fused_converts_a_foreign_checkpoint_without_writing(tmp_path):
    timm = pytest.importorskip("timm")
    from qarep_dense.tasks.registry import convert_checkpoint

    ref = timm.create_model("repvgg_a0", pretrained=False, num_classes=10).eval()  # random init, no download
    src = tmp_path / "a0.pth"
    torch.save(ref.state_dict(), src)
    fused, meta = load_fused(src, "cls", source_format="timm", image_size=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a0.pth"]  # converted in memory
    assert meta["image_size"] == 64 and meta["converted_from"]["source"] == "timm"
    assert not remaining_multi_branch(fused)
    written, _ = convert_checkpoint(src, tmp_path / "ours.pt", "timm", image_size=64)
    ours, written_meta = load_model(written)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), ref(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fused(x), ours(x), rtol=1e-4, atol=1e-4)
    assert written_meta == meta  # the file and the in-memory conversion: one metadata, built in one place


def test_selection_split_is_deterministic_disjoint_and_leaves_calibration_unchanged(setup):
    _, root, _, _ = setup
    loader = make_cls_loader(root, SIZE, 4, train=False, split="train", shuffle=True)
    before = sampler_order(loader)
    first, disjoint = carve_selection(loader, calib_images=8, selection_images=10)
    again, _ = carve_selection(loader, calib_images=8, selection_images=10)
    assert first.dataset.indices == again.dataset.indices and disjoint
    assert not set(first.dataset.indices) & set(before[:8])
    assert sampler_order(loader) == before  # carving does not move calibration's images
    _, overlap = carve_selection(loader, calib_images=30, selection_images=10)
    assert not overlap  # 36 training images cannot hold 30 + 10 apart: said, not hidden
    # a random sampler with its own generator: the order is read without advancing it
    gen_loader = torch.utils.data.DataLoader(list(range(20)), batch_size=4, shuffle=True,
                                             generator=torch.Generator().manual_seed(0))
    order = sampler_order(gen_loader)
    assert order == sampler_order(gen_loader) and torch.cat(list(gen_loader)).tolist() == order


def test_task_data_gives_the_three_splits(setup):
    _, root, ckpt, _ = setup
    _, meta = load_model(ckpt)
    data = task_data(request_for(ckpt, meta, root, batch_size=4, progress=False), calib_images=8,
                     selection_images=12)
    assert data.evaluator.metric_name == "top1" and data.selection_disjoint
    assert sum(len(b[0]) for b in data.selection) == 12
    val = {p for p, _ in data.evaluator.val_loader.dataset.samples}
    assert all("train" in str(data.selection.dataset.dataset.samples[i][0]) for i in data.selection.dataset.indices)
    assert not val & {data.selection.dataset.dataset.samples[i][0] for i in data.selection.dataset.indices}


def test_quantize_and_check_end_to_end(setup, tmp_path):
    pytest.importorskip("pytorch_quantization")
    pytest.importorskip("onnxruntime")
    from qarep_dense.quant import QuantConfig
    from qarep_dense.tasks.quant_check import CheckOptions, check_int8, quantize_and_check

    _, root, ckpt, _ = setup
    fused, meta = load_fused(ckpt, "cls")
    evaluator = get_task("cls").make_evaluator(request_for(ckpt, meta, root, batch_size=4, progress=False))
    fp32 = float(evaluator.evaluate(fused)["top1"])
    report = quantize_and_check(fused, evaluator.calibration_loader(), evaluator.preprocess,
                                QuantConfig(num_calib_batches=2), evaluator,
                                CheckOptions(onnx_path=tmp_path / "m.onnx", latency=True, repeats=2,
                                             progress=False))
    assert report.fp32 == fp32 and report.metric == "top1"
    assert report.int8 == float(evaluator.evaluate(report.model)["top1"])
    assert report.drop == pytest.approx(fp32 - report.int8)
    assert report.convs > 0 and report.integer_convs == report.convs
    assert report.int8_ort is not None and (tmp_path / "m.onnx").is_file() and (tmp_path / "m.fp32.onnx").is_file()
    assert report.latency["fp32_ms"] > 0 and report.latency["int8_ms"] > 0
    d = report.to_dict()
    assert "model" not in d and d["integer_convs"] == report.integer_convs and d["ptq"]["config"]["calibrator"] == "max"
    # no evaluator (a user's unlabelled images): no metric, the ORT check still runs; the temp ONNX is removed
    images = [batch[0] for batch in evaluator.calibration_loader()][:2]
    bare = quantize_and_check(fused, images, evaluator.preprocess, QuantConfig(num_calib_batches=2),
                              options=CheckOptions(progress=False))
    assert bare.fp32 is None and bare.int8 is None and bare.onnx is None and bare.integer_convs == bare.convs
    # the check alone, on the model quantize_and_check made: the same counts, and it names the file ORT ran
    example = evaluator.preprocess(images[0][:4])
    check = check_int8(report.model, fused, example, evaluator,
                       CheckOptions(onnx_path=tmp_path / "again.onnx", ort_pre_process=False, progress=False))
    assert check.ort.integer_convs == report.integer_convs and check.scored_file == "again.onnx"
    assert check.int8_ort == report.int8_ort and check.latency is None


def test_a_classifier_without_a_recorded_preprocess_gets_imagenets():
    from qarep_dense.tasks.classification import preprocess_of

    meta = _meta()
    del meta["preprocess"]
    assert preprocess_of(meta) == IMAGENET  # every classifier here trains with it
