"""Per-layer sensitivity finds the planted outlier layer; partial PTQ keeps it float."""
from functools import partial

import pytest
import torch
from torch import nn

pytest.importorskip("pytorch_quantization")

from qarep_dense.data.preprocess import IMAGENET  # noqa: E402
from qarep_dense.layers import make_block, reparameterize  # noqa: E402
from qarep_dense.quant import QuantConfig, quantize_partial, quantize_ptq, rank_layers, sensitivity  # noqa: E402
from qarep_dense.quant.sensitivity import relative_mse  # noqa: E402
from support import uint8_batches  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


image_loader = partial(uint8_batches, size=12)


def outlier_model(channels=8):
    """stem -> healthy block -> block with a dead-channel identity outlier -> healthy block."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, channels, 3, padding=1)
    with torch.no_grad():
        conv.weight[0] = 0
        conv.bias[0] = -1.0
    blocks = [make_block("repvgg", channels, channels) for _ in range(3)]
    with torch.no_grad():
        for bn in [m for b in blocks for m in b.modules() if isinstance(m, nn.BatchNorm2d)]:
            bn.running_var.uniform_(0.5, 1.5)
        # The first block reads the stem's dead channel 0: its identity BN learned var ~0 there.
        blocks[0].branch_identity.running_var[0] = 1e-12
    return reparameterize(nn.Sequential(conv, nn.ReLU(), *blocks).eval())


def test_relative_mse_by_hand():
    ref = [torch.tensor([3.0, 4.0])]
    assert relative_mse([torch.tensor([3.0, 1.0])], ref) == pytest.approx(9 / 25)
    assert relative_mse([(torch.ones(2), torch.zeros(1))], [(torch.ones(2), torch.ones(1))]) == pytest.approx(1 / 3)


def test_ranking_puts_the_outlier_layer_first_and_partial_keeps_it_float():
    model = outlier_model()
    loader = image_loader()
    ranking = sensitivity(model, loader, IMAGENET, QuantConfig(), progress=False)
    names = [e.name for e in ranking]
    assert names[0] == "2.conv" and set(names) == {"0", "2.conv", "3.conv", "4.conv"}
    assert ranking[0].rel_mse > 10 * ranking[1].rel_mse
    qpartial, report, _ = quantize_partial(model, loader, IMAGENET, keep_float=1, ranking=ranking, progress=False)
    assert type(qpartial[2].conv) is nn.Conv2d and "2.conv" not in report.quantized and "3.conv" in report.quantized
    qfull, _ = quantize_ptq(model, loader, IMAGENET, progress=False)
    x = IMAGENET(loader[0][0])
    with torch.no_grad():
        y = model(x)
        err_full, err_partial = relative_mse([qfull(x)], [y]), relative_mse([qpartial(x)], [y])
    assert err_partial < err_full / 5


def test_metric_callback_ranking_and_quantizers_restored():
    model = outlier_model()
    loader = image_loader()
    qmodel, _ = quantize_ptq(model, loader, IMAGENET, progress=False)
    x = IMAGENET(loader[1][0])
    with torch.no_grad():
        y = model(x)
        y_q = qmodel(x)

    def metric(m):  # higher is better: negative output error on a held-out batch
        with torch.no_grad():
            return -float(((m(x) - y) ** 2).mean())

    ranking = rank_layers(qmodel, [b for b, _ in loader], IMAGENET, metric_fn=metric, progress=False)
    assert ranking[0].name == "2.conv" and ranking[0].metric_drop > 0
    with torch.no_grad():
        assert torch.equal(qmodel(x), y_q)  # every quantizer is back on
