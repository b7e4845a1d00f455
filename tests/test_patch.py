"""kernels.patch: what it replaces in torchvision's alexnet, vgg11, vgg16 and a Caffe-style AlexNet with
LRN, that a patched model gives the unpatched one's outputs and gradients (eval mode, and a training
step with dropout off), and what it leaves alone and why. The ops' CPU path: the kernels have their own
tests."""

import copy

import pytest
import torch
import torch.nn as nn
import torchvision

import kernels
import kernels.nn as knn
from tests._utils import Tol, assert_close_verbose

TOL = Tol(atol=1e-5, rtol=1e-4, reason="float32 through a whole network: LRN's s^-beta computed another "
                                       "way, gradient sums in another order")


def caffe_alexnet(width=8, num_classes=10, dropout=0.5) -> nn.Sequential:
    """AlexNet as Caffe's bvlc_alexnet writes it (conv -> ReLU -> LRN -> pool, pooling rounding up), as one
    nn.Sequential, at a small width."""
    c = [width, 2 * width, 3 * width, 3 * width, 2 * width]
    return nn.Sequential(
        nn.Conv2d(3, c[0], 11, stride=4), nn.ReLU(inplace=True), nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(c[0], c[1], 5, padding=2, groups=2), nn.ReLU(inplace=True),
        nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(c[1], c[2], 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c[2], c[3], 3, padding=1, groups=2), nn.ReLU(inplace=True),
        nn.Conv2d(c[3], c[4], 3, padding=1, groups=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Flatten(),
        nn.Linear(c[4] * 2 * 2, 32), nn.ReLU(inplace=True), nn.Dropout(dropout),  # 2x2 maps at 71x71 input
        nn.Linear(32, 32), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(32, num_classes),
    )


def _small_classifier(model: nn.Module, in_features: int, hidden: int = 64) -> nn.Module:
    """model (built on the meta device) with its classifier's Linear layers narrowed to ``hidden`` units
    (the Sequential's structure kept), allocated on the CPU and initialised."""
    linears = [i for i, m in enumerate(model.classifier) if isinstance(m, nn.Linear)]
    for i in linears:
        old = model.classifier[i]
        model.classifier[i] = nn.Linear(in_features if i == linears[0] else hidden,
                                        hidden if i != linears[-1] else old.out_features, device="meta")
    model = model.to_empty(device="cpu")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()
    return model


def small_vgg11(dropout=0.5) -> nn.Module:
    """torchvision's VGG class with vgg11's layer list at 1/16 of its width and a small classifier of the
    same structure (Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear)."""
    from torchvision.models.vgg import VGG, make_layers
    cfg = [4, "M", 8, "M", 16, 16, "M", 32, 32, "M", 32, 32, "M"]
    with torch.device("meta"):  # VGG's own classifier (25088 -> 4096) is narrowed before it is allocated
        model = VGG(make_layers(cfg), num_classes=10, dropout=dropout)
    return _small_classifier(model, 32 * 7 * 7)


def small_alexnet(dropout=0.5) -> nn.Module:
    """torchvision's alexnet: its features as they are, a narrow classifier (9216 -> 64 -> 64 -> 10)."""
    with torch.device("meta"):
        model = torchvision.models.alexnet(num_classes=10, dropout=dropout)
    return _small_classifier(model, 256 * 6 * 6)


def kinds(report):
    return [(r.names, type(r.new).__name__) for r in report.replaced]


def test_patch_torchvision_alexnet_reports_what_it_replaced():
    model = torchvision.models.alexnet()
    report = kernels.patch(model)
    assert kinds(report) == [
        (("features.1", "features.2"), "ReLUMaxPool2d"), (("features.4", "features.5"), "ReLUMaxPool2d"),
        (("features.11", "features.12"), "ReLUMaxPool2d"), (("classifier.0",), "Dropout"),
        (("classifier.2", "classifier.3"), "ReLUDropout")]
    assert report.skipped == []
    assert "5 replaced" in str(report) and "features.1..2: ReLU -> MaxPool2d => ReLUMaxPool2d" in str(report)
    assert isinstance(model.features[2], nn.Identity)  # indices (and state-dict keys) stay as they were
    assert kernels.patch(model).replaced == []  # patching twice changes nothing


@pytest.mark.parametrize("name, pools", [("vgg11", 5), ("vgg16", 5)])
def test_patch_torchvision_vgg(name, pools):
    with torch.device("meta"):  # the structure only: 133M / 138M parameters are not needed for it
        model = getattr(torchvision.models, name)()
    keys = list(model.state_dict())
    report = kernels.patch(model)
    got = [t for _, t in kinds(report)]
    assert got == ["ReLUMaxPool2d"] * pools + ["ReLUDropout"] * 2, str(report)
    assert list(model.state_dict()) == keys


def test_patch_caffe_alexnet_fuses_relu_lrn_pool():
    model = caffe_alexnet()
    report = kernels.patch(model)
    assert [t for _, t in kinds(report)] == ["ReLULocalResponseNormMaxPool2d"] * 2 + ["ReLUMaxPool2d"] + \
        ["ReLUDropout"] * 2
    fused = model[1]
    assert (fused.size, fused.alpha, fused.beta, fused.k, fused.kernel_size, fused.stride,
            fused.ceil_mode) == (5, 1e-4, 0.75, 1.0, 3, 2, True)


@pytest.mark.parametrize("build, size", [(caffe_alexnet, 71), (small_vgg11, 32), (small_alexnet, 64)],
                         ids=["caffe_alexnet", "small_vgg11", "torchvision_alexnet"])
def test_patched_model_gives_the_same_outputs_and_gradients(build, size):
    """Eval mode: outputs and every parameter's gradient; training mode with dropout off: the loss and
    gradients of a training step."""
    torch.manual_seed(0)
    model = build(dropout=0.0)
    patched = copy.deepcopy(model)
    assert kernels.patch(patched).replaced
    x = torch.randn(2, 3, size, size)
    target = torch.tensor([1, 3])
    for train in (False, True):
        results = []
        for m in (model, patched):
            m.train(train)
            m.zero_grad()
            with kernels.triton_disabled():
                out = m(x)
                loss = nn.functional.cross_entropy(out, target)
                loss.backward()
            results.append((out.detach(), [p.grad for p in m.parameters()]))
        (out, grads), (p_out, p_grads) = results
        assert_close_verbose(p_out, out, TOL, name=f"train={train} output")
        for i, (g, pg) in enumerate(zip(grads, p_grads)):
            scale = float(g.abs().max())
            assert_close_verbose(pg, g, Tol(TOL.atol * max(scale, 1.0), TOL.rtol, TOL.reason),
                                 name=f"train={train} gradient of parameter {i}")


def test_patch_keeps_training_mode_and_dropout_rate():
    model = caffe_alexnet(dropout=0.3).eval()
    kernels.patch(model)
    drops = [m for m in model.modules() if isinstance(m, knn.ReLUDropout)]
    assert len(drops) == 2 and all(m.p == 0.3 and not m.training for m in drops)
    with kernels.triton_disabled():
        assert torch.equal(drops[0](torch.ones(8)), torch.ones(8))  # eval: dropout off
    model.train()
    with kernels.triton_disabled():
        y = drops[0](torch.ones(64, 1024))
    kept = y != 0
    assert torch.all(y[kept] == 1 / 0.7) and abs(kept.float().mean().item() - 0.7) < 0.01


def test_patch_leaves_alone_what_it_cannot_prove_equivalent():
    relu_hooked = nn.ReLU()
    relu_hooked.register_forward_hook(lambda m, i, o: None)
    shared = nn.ReLU()

    class MyReLU(nn.ReLU):
        pass

    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), relu_hooked, nn.MaxPool2d(2),  # hook on the ReLU: the pool alone is replaced
        nn.Conv2d(4, 4, 3), shared, nn.MaxPool2d(2),  # shared ReLU (also used below): the pool alone
        nn.Conv2d(4, 4, 3), nn.ReLU(), nn.MaxPool2d(2, dilation=2),  # dilation: nothing
        nn.Conv2d(4, 4, 1), MyReLU(), nn.MaxPool2d(1, return_indices=True),  # subclass; return_indices
    )
    model.extra = shared
    report = kernels.patch(model)
    assert kinds(report) == [(("2",), "MaxPool2d"), (("5",), "MaxPool2d")]
    reasons = {s.names: s.reason for s in report.skipped}
    assert "hooks" in reasons[("1", "2")]
    assert "also at extra" in reasons[("4", "5")]
    assert "dilation=2 is not supported" in reasons[("7", "8")] and ("8",) in reasons
    assert "return_indices=True is not supported" in reasons[("11",)]
    assert "subclass of nn.ReLU" in reasons[("10",)]
    assert isinstance(model[1], nn.ReLU) and isinstance(model[7], nn.ReLU)


def test_patch_outside_sequential_replaces_single_modules_only():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.relu = nn.ReLU()
            self.pool = nn.MaxPool2d(2)
            self.drop = nn.Dropout(0.1)

        def forward(self, x):
            return self.drop(self.pool(self.relu(x)))

    net = Net()
    report = kernels.patch(net, dropout=False)
    assert kinds(report) == [(("pool",), "MaxPool2d")]
    assert isinstance(net.relu, nn.ReLU) and isinstance(net.drop, nn.Dropout)
