"""What the ops share beyond the table's contracts (tests/test_op_contracts.py): the paper's layer
sequence, every op chained in one graph, compiled by Inductor against eager; and the launch plumbing
(kernels/_common.py): a launch runs under its tensors' device, also when recorded."""

import contextlib

import torch

import kernels
from kernels import _common
from tests._utils import TOLERANCES, assert_close_verbose, grad_tol, make_grad, make_values, to_memory_format


def block(x, seed):
    """The paper's layer sequence at toy size, every op once."""
    y = kernels.relu_lrn_max_pool2d(x, 5, 1e-4, 0.75, 2.0, 3, 2, 0)  # (2, 8, 4, 4)
    z = kernels.max_pool2d(kernels.relu_lrn(y, 3, 0.1, 0.75, 2.0), 2, 1, 1)  # (2, 8, 5, 5)
    z = kernels.relu_max_pool2d(z - 0.5, 1, 1, 0)  # (2, 8, 5, 5)
    h = kernels.relu_dropout(z.flatten(1) * 2.0 - 0.1, 0.5, True, seed)
    return kernels.dropout(h, 0.3, True, seed + 1)


def test_compile_fullgraph_inductor_matches_eager():
    torch._dynamo.reset()
    x = to_memory_format(make_values((2, 8, 9, 9), "normal", 21, torch.float32, scale=5.0), "contiguous")
    g = make_grad((2, 200), 21, torch.float32)
    results = []
    for fn in [block, torch.compile(block, backend="inductor", fullgraph=True)]:
        xk = x.detach().requires_grad_()
        out = fn(xk, 17)
        (grad,) = torch.autograd.grad(out, xk, g)
        results.append((out.detach(), grad))
    (out, grad), (cout, cgrad) = results
    assert_close_verbose(cout, out, TOLERANCES[torch.float32], name="inductor forward")
    assert_close_verbose(cgrad, grad, grad_tol(torch.float32, grad), name="inductor backward")


# ------------------------------------------------------------------------------------------ device guard


class FakeCudaDevice:
    """Stands in for ``torch.cuda.device``: records which device index is current (0 to start with)."""

    def __init__(self):
        self.current = [0]
        self.entered = []

    def __call__(self, device):
        if isinstance(device, torch.device):
            index = device.index
        elif isinstance(device, str):
            index = torch.device(device).index
        else:
            index = int(device)

        @contextlib.contextmanager
        def guard():
            self.entered.append(index)
            self.current.append(index)
            try:
                yield
            finally:
                self.current.pop()

        return guard()


class FakeKernel:
    """A @triton.jit stand-in: ``fn[grid](*args, **kwargs)`` records the call and the current device."""

    def __init__(self, devices: FakeCudaDevice):
        self.devices = devices
        self.calls = []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.calls.append(dict(grid=grid, args=args, kwargs=kwargs, device=self.devices.current[-1]))

        return run


def test_launch_runs_under_the_tensors_device(monkeypatch):
    """A tensor on cuda:1 while cuda:0 is current is launched under cuda:1, and cuda:0 is current again
    after the launch."""
    devices = FakeCudaDevice()
    monkeypatch.setattr(torch.cuda, "device", devices)
    fn = FakeKernel(devices)
    cfg = _common.Config(dict(BLOCK=64), num_warps=2)
    _common.launch("fake", fn, (3,), (1, 2.5), cfg, torch.device("cuda", 1), EXTRA=True)
    assert fn.calls == [dict(grid=(3,), args=(1, 2.5), kwargs=dict(BLOCK=64, EXTRA=True, num_warps=2),
                             device=1)], f"launched as {fn.calls} (devices entered: {devices.entered})"
    assert devices.current == [0], "the guard must be left after the launch"


def test_recorded_launch_is_handed_over_under_the_tensors_device(monkeypatch):
    devices = FakeCudaDevice()
    monkeypatch.setattr(torch.cuda, "device", devices)
    seen = []
    with _common.recording(lambda launch: seen.append((launch.device, devices.current[-1]))):
        _common.launch("fake", FakeKernel(devices), (1,), (), _common.Config({}), torch.device("cuda", 1))
    assert seen == [(torch.device("cuda", 1), 1)]


# ------------------------------------------------------------------------------------ which path runs


def test_triton_disabled_sends_cpu_tensors_to_the_pytorch_path():
    """The "torch" path of every equivalence test is ``triton_disabled``: it must really leave the kernels
    (else the plain-PyTorch path goes untested); outside it CPU tensors run the kernels only when
    interpreted."""
    x = torch.empty(1)
    assert kernels.use_triton(x) == (_common.HAS_TRITON and _common.INTERPRET)
    with kernels.triton_disabled():
        assert not kernels.use_triton(x)
    assert kernels.use_triton(x) == (_common.HAS_TRITON and _common.INTERPRET)


def test_capability_is_zero_on_rocm(monkeypatch):
    """On ROCm the launch plans take the no-PTX shapes (capability 0), whatever a CUDA query would say."""
    monkeypatch.setattr(torch.version, "hip", "6.0")
    assert _common.capability(torch.empty(1)) == 0
    monkeypatch.setattr(torch.version, "hip", None)
    assert _common.capability(torch.empty(1)) == 90  # the interpreter and recorded launches


def test_tiny_s_exactly_where_s_may_be_subnormal():
    """TINY scales s around the flush-to-zero approximations. Needed where s = k + alpha/n * sumsq may fall
    below float32's normal range (k < 2^-126, or alpha < 0); elsewhere it would cost instructions. The
    interpreter computes exactly, so only this test (and a GPU run) sees either mistake."""
    from kernels.lrn import tiny_s

    for alpha, k in [(1e-4, 2.0), (1e-4, 1.0), (0.5, 2.0 ** -126), (0.0, 1e-30)]:
        assert not tiny_s(alpha, k), (alpha, k)
    for alpha, k in [(1e-4, 0.0), (1e-4, 2.0 ** -127), (1e-4, 1e-45), (1e-4, -1.0), (-1e-4, 2.0),
                     (1e-4, float("nan"))]:
        assert tiny_s(alpha, k), (alpha, k)
