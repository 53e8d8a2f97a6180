"""QAT: the schedule, fine-tuning lowers the loss, post-BN folded after QAT with weight amax re-calibrated."""
import copy

import pytest
import torch
from torch import nn

pytest.importorskip("pytorch_quantization")

from qarep_dense.data.preprocess import IMAGENET  # noqa: E402
from qarep_dense.layers import reparameterize  # noqa: E402
from qarep_dense.layers.conv import ConvAct, ConvBNAct  # noqa: E402
from qarep_dense.models import build_classifier  # noqa: E402
from qarep_dense.quant import QuantConfig, fold_after_qat, prepare_qat, qat_finetune, quantize_ptq  # noqa: E402
from qarep_dense.quant.qat import warmup_cosine  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def colour_task(n_batches=4, batch=12, size=12, seed=0):
    """3 classes: the brightest colour channel is the label."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        labels = torch.randint(0, 3, (batch,), generator=g)
        images = torch.randint(0, 120, (batch, 3, size, size), generator=g)
        images[torch.arange(batch), labels] += 120
        out.append((images.to(torch.uint8), labels))
    return out


def mean_loss(model, data):
    model.eval()
    with torch.no_grad():
        return sum(float(nn.functional.cross_entropy(model(IMAGENET(x)), y)) for x, y in data) / len(data)


def test_warmup_cosine_schedule_by_hand():
    assert warmup_cosine(0, 10, 2) == 0.5 and warmup_cosine(1, 10, 2) == 1.0
    assert warmup_cosine(2, 10, 2) == 1.0 and warmup_cosine(6, 10, 2) == pytest.approx(0.5)
    assert warmup_cosine(10, 10, 2) == pytest.approx(0.0)


def test_qat_lowers_the_loss_and_folding_keeps_outputs():
    torch.manual_seed(0)
    train_form = build_classifier("test", "qarepvgg", 3, stem_stride=1)
    qat_form = reparameterize(train_form, fold_bn=False)  # post-BN kept for QAT
    assert any(isinstance(m, ConvBNAct) for m in qat_form.modules())
    data = colour_task()
    qmodel, _ = quantize_ptq(qat_form, data, IMAGENET, QuantConfig(num_calib_batches=2), progress=False)
    before = mean_loss(qmodel, data)
    prepare_qat(qmodel)
    history = qat_finetune(qmodel, data, IMAGENET, nn.functional.cross_entropy, epochs=4, warmup_epochs=1, lr=0.1,
                           progress=False)
    after = mean_loss(qmodel, data)
    assert len(history) == 4 and after < 0.85 * before, (before, after, history)
    # Weight amax follows the weights during QAT.
    conv = qmodel.fc
    assert torch.allclose(conv.weight_quantizer.amax, conv.weight.detach().abs().amax(1, keepdim=True))

    unfolded = copy.deepcopy(qmodel).eval()
    folded = fold_after_qat(qmodel)
    assert not any(isinstance(m, (ConvBNAct, nn.BatchNorm2d)) for m in folded.modules())
    assert isinstance(folded.stages[0][0], ConvAct)
    conv = folded.stages[2][1].conv
    assert torch.allclose(conv.weight_quantizer.amax, conv.weight.detach().abs().amax((1, 2, 3), keepdim=True))
    x = IMAGENET(data[0][0])
    with torch.no_grad():
        y_unfolded, y_folded = unfolded(x), folded(x)
    assert float((y_unfolded - y_folded).norm() / y_unfolded.norm()) < 1e-2


def test_prepare_qat_refuses_a_float_model():
    with pytest.raises(ValueError, match="no quantizers.*quantize_ptq first"):
        prepare_qat(reparameterize(build_classifier("test", "qarepvgg", 3)))
