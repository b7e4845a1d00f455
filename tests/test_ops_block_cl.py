"""The channels_last kernels of the fused block (kernels/block_cl.py): forward bit for bit equal to
max_pool2d(relu_lrn(x)) and backward against that composition (tests/test_ops_block.py's check_block),
on the cases their structure makes special: channel groups that overlap their neighbour (C not a multiple
of G), C smaller than G or than the LRN window (halo channels on both sides), odd planes (the last column
patch and row block overlap their neighbours, the backward's last pixel blocks run past the plane), a
program's surplus threads, pools without shared rows (KH = SH), padding (backward only), ties, NaN / inf,
16-bit dtypes. Each case first asserts that it reaches the channels_last kernels."""

import pytest
import torch

import kernels
from kernels._common import recording
from tests._utils import make_values, pair, to_memory_format
from tests.test_ops_block import check_block

CASES = [  # shape, lrn, pool, value kind, dtype, kernels expected (forward, backward)
    ((2, 13, 9, 11), (5, 1.0, 0.75, 1.0), (3, 2, 0), "normal", torch.float32, (True, True)),
    ((1, 3, 7, 8), (5, 0.5, 0.75, 2.0), (3, 2, 0), "ties", torch.float32, (True, True)),
    ((1, 20, 12, 7), (4, 1.0, 0.6, 1.0), (2, 2, 0), "normal", torch.float32, (True, True)),
    ((1, 9, 8, 9), (3, 0.8, 1.0, 1.0), ((3, 2), (2, 1), 0), "ties", torch.float32, (True, True)),
    ((1, 16, 9, 9), (5, 1.0, 0.75, 1.0), (3, 2, 0), "ties", torch.bfloat16, (True, True)),
    ((1, 10, 7, 7), (5, 0.5, 0.75, 2.0), (3, 2, 0), "special", torch.float16, (True, True)),
    ((1, 24, 7, 5), (5, 0.5, 0.75, 2.0), (3, 2, 0), "special", torch.float16, (True, True)),
    ((1, 11, 7, 6), (5, 1.0, 0.75, 1.0), (3, 2, 1), "normal", torch.float32, (False, True)),
    ((1, 6, 6, 5), (1, 1.0, 0.5, 1.0), ((2, 3), (1, 2), 0), "normal", torch.float32, (True, True)),
    ((1, 7, 6, 6), (2, 1.0, 0.75, 1.0), (3, 1, 0), "normal", torch.float32, (True, False)),
]


def _launched(x, lrn, pool, vecs=None):
    """The kernels the forward and backward launch, by name (recorded, not run); their VEC constexprs
    go into the set ``vecs`` if given."""
    names = []

    def record(launch):
        names.append(getattr(launch.fn, "__name__", None) or launch.fn.fn.__name__)
        if vecs is not None:
            vecs.add(launch.constexprs.get("VEC"))

    with recording(record):
        xk = x.detach().requires_grad_()
        out = kernels.relu_lrn_max_pool2d(xk, *lrn, *pool)
        out.sum().backward()
    return names


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1][0]}-{c[2]}-{c[3]}-{c[4]}" for c in CASES])
def test_channels_last_block(case):
    shape, lrn, pool, kind, dtype, expected = case
    x = to_memory_format(make_values(shape, kind, shape[1], dtype, 3.0), "channels_last")
    names = _launched(x, lrn, pool)
    assert ("_cl_fwd_kernel" in names) == expected[0], names
    assert ("_cl_bwd_kernel" in names) == expected[1], names
    check_block("triton", x, lrn, pool, seed=shape[1])


def test_channels_last_block_nan_wins_and_spreads():
    """A NaN spreads over its LRN window's channels and wins each pooling window holding it (the last
    NaN: the gradient goes nowhere else); +inf gives NaN at itself."""
    x = make_values((1, 12, 7, 7), "normal", 4, torch.float32)
    x[0, 5, 2, 2] = float("nan")
    x[0, 0, 4, 5] = float("inf")
    x = to_memory_format(x, "channels_last")
    out, _ = check_block("triton", x, (5, 0.5, 0.75, 2.0), (3, 2, 0))
    assert out[0, 3:8, :2, :2].isnan().all()
    assert not out[0, 8:, :2, :2].isnan().any()


def test_channels_last_block_many_programs_and_walks(monkeypatch):
    """Programs of 2 threads (the last one of each walk with a surplus thread that redoes the last item);
    several walks down the rows: forward OH = 11 (walks of 6 and 5 pooled rows on the grid's second
    axis), backward 12 block rows (two walks of 6)."""
    from kernels import block_cl

    monkeypatch.setattr(block_cl, "_BLOCK", 2)
    block_cl._fwd_plan.cache_clear()
    block_cl._bwd_plan.cache_clear()
    try:
        x = to_memory_format(make_values((3, 8, 23, 3), "normal", 7, torch.float32, 3.0), "channels_last")
        assert _launched(x, (5, 1e-4, 0.75, 2.0), (3, 2, 0)) == ["_cl_fwd_kernel", "_cl_bwd_kernel"]
        check_block("triton", x, (5, 1e-4, 0.75, 2.0), (3, 2, 0), seed=7)
        k3s2 = (pair(3), pair(2), pair(0))
        assert block_cl._fwd_plan(3, 8, 11, 1, k3s2, 5, 0.75, False, 90)[0] == (2, 2)  # (programs, walks)
        assert block_cl._fwd_plan(3, 8, 11, 1, k3s2, 5, 0.75, False, 90)[2][3] == 6
        assert block_cl._bwd_plan(3, 8, 23, 3, k3s2, 5, 0.75)[2][4] == 6
    finally:
        block_cl._fwd_plan.cache_clear()
        block_cl._bwd_plan.cache_clear()


def test_channels_last_block_misaligned_tensor_loads_one_channel_at_a_time():
    """A channels_last tensor 4 bytes past a 16-byte boundary: C = 16 would allow vector loads, the
    address does not (VEC = 1)."""
    n, c, h, w = 1, 16, 7, 7
    storage = make_values((n * c * h * w + 1,), "normal", 3, torch.float32, 3.0)
    x = storage[1:].view(n, h, w, c).permute(0, 3, 1, 2)
    assert x.is_contiguous(memory_format=torch.channels_last) and x.data_ptr() % 16 != 0
    vecs = []
    with recording(lambda launch: vecs.append(launch.constexprs.get("VEC"))):
        kernels.relu_lrn_max_pool2d(x.detach().requires_grad_(), 5, 1.0, 0.75, 1.0, 3, 2, 0).sum().backward()
    assert vecs == [1, 1]
    check_block("triton", x, (5, 1.0, 0.75, 1.0), (3, 2, 0), seed=3)


def test_channels_last_block_cases_used_both_load_widths():
    """The cases above launch both the one-channel loads (C not a multiple of the vector) and the 16-byte
    vector loads (4 float32, 8 16-bit values): recorded here for every case, without running them."""
    vecs = set()
    for shape, lrn, pool, kind, dtype, _ in CASES:
        x = to_memory_format(make_values(shape, kind, shape[1], dtype, 3.0), "channels_last")
        _launched(x, lrn, pool, vecs)
    assert {1, 4, 8} <= vecs, vecs


def test_channels_last_forward_fits_rules():
    from kernels import block_cl

    x = torch.empty(1, 8, 9, 9).to(memory_format=torch.channels_last)
    k3s2 = (pair(3), pair(2), pair(0))
    assert block_cl.forward_fits(x, k3s2, 5)
    assert not block_cl.forward_fits(x.double(), k3s2, 5)
    assert not block_cl.forward_fits(x, (pair(3), pair(2), pair(1)), 5)  # padding
    assert not block_cl.forward_fits(x, (pair(2), pair(3), pair(0)), 5)  # stride past the window
    assert not block_cl.forward_fits(x, (pair(5), pair(2), pair(0)), 5)  # registers: spills
    assert block_cl.backward_fits(x, (pair(3), pair(2), pair(1)), 5)
    assert not block_cl.backward_fits(x, (pair(17), pair(16), pair(1)), 5)
