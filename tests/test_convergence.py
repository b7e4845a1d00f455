"""Convergence (as Liger-Kernel checks its kernels): the same network trained N steps with the fused ops and
with PyTorch's, from the same initialisation on the same batches, dropout off, gives the same loss at every
step within float32 tolerance, and the same weights at the end: AlexNet with ops="fused" against
ops="eager", and a torchvision-style VGG patched with kernels.patch against itself unpatched. On CPU the
ops take their plain-PyTorch path (the interpreter would take minutes; the kernels have their own
equivalence tests); the CUDA-marked variants run the Triton kernels on a GPU."""

import copy

import pytest
import torch
import torch.nn as nn

import kernels
from alexnet.model import AlexNet, AlexNetConfig
from tests._utils import Tol, assert_close_verbose
from tests.test_patch import small_vgg11

# float32 through a network and several SGD steps: LRN's s^-beta computed another way and gradient sums
# in another order change the last bits, which the steps carry forward (measured: < 1e-6 relative here)
LOSS = Tol(atol=1e-6, rtol=2e-5, reason="float32, a few ulps per step carried through N SGD steps")
WEIGHTS = Tol(atol=1e-5, rtol=1e-4, reason="float32 weights after N steps from float32 gradients")


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def train(model, batches, device):
    """Losses of N SGD steps (momentum, weight decay) and the final parameters."""
    model = model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    model.train()
    losses = []
    with kernels.triton_disabled():  # CPU tensors: the plain-PyTorch path; CUDA tensors: the kernels
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
    return torch.stack(losses), [p.detach().clone() for p in model.parameters()]


def batches(n, size, seed=0):
    """Two batches of 4 images, alternating for n steps: a loss that goes down within a few steps."""
    g = torch.Generator().manual_seed(seed)
    two = [(torch.randn(4, 3, size, size, generator=g), torch.randint(0, 10, (4,), generator=g))
           for _ in range(2)]
    return [two[i % 2] for i in range(n)]


def check(name, got, want):
    (loss, params), (ref_loss, ref_params) = got, want
    assert_close_verbose(loss, ref_loss, LOSS, name=f"{name}: loss per step")
    assert (ref_loss[-2:].mean() < ref_loss[:2].mean()).item(), f"{name}: no progress: {ref_loss.tolist()}"
    for i, (p, r) in enumerate(zip(params, ref_params)):
        assert_close_verbose(p, r, WEIGHTS, name=f"{name}: parameter {i} after {len(loss)} steps")


@pytest.mark.parametrize("device", DEVICES)
def test_alexnet_fused_trains_as_eager(device):
    cfg = AlexNetConfig(width=1 / 16, image_size=67, num_classes=10, dropout=0.0, init="kaiming")
    torch.manual_seed(0)
    eager = AlexNet(cfg, ops="eager")
    fused = AlexNet(cfg, ops="fused")
    fused.load_state_dict(eager.state_dict())
    data = batches(8, 67)
    check(f"AlexNet {device}", train(fused, data, device), train(eager, data, device))


@pytest.mark.parametrize("device", DEVICES)
def test_patched_torchvision_style_net_trains_as_unpatched(device):
    torch.manual_seed(0)
    model = small_vgg11(dropout=0.0)
    patched = copy.deepcopy(model)
    assert len(kernels.patch(patched).replaced) == 7
    data = batches(8, 32)
    check(f"patched VGG {device}", train(patched, data, device), train(model, data, device))
