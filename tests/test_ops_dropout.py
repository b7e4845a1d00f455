"""kernels.dropout and kernels.relu_dropout: inverted dropout whose mask is regenerated from a seed.

The reference is ``reference.dropout_with_mask(x, mask, p)`` with the mask recovered from the op's
output (nonzero where the input was nonzero). Statistics: keep rate within 6 binomial standard
deviations. Seeds: same seed same mask, different seeds different masks, seed=None follows
torch.manual_seed without reseeding the global generator, an integer seed reaches the kernel as an
integer (never a tensor). The stream is pinned: element g takes word g mod 4 of Philox4x32-10 at
counter g div 4 (checked against a plain-Python Philox that reproduces Random123's known answers).
(What every op keeps, gradcheck, opcheck, saved bytes, bad and empty input among it:
tests/test_op_contracts.py.)"""

import contextlib
import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import kernels
from kernels import reference
from kernels._common import recording
from tests import _utils as draws
from tests._utils import (
    PATHS,
    TOLERANCES,
    assert_close_verbose,
    assert_memory_format,
    make_grad,
    make_values,
    on_path,
)

DROPOUT = importlib.import_module("kernels.dropout")  # the module (kernels.dropout is the function)
OPS = {"dropout": kernels.dropout, "relu_dropout": kernels.relu_dropout}
probs = st.sampled_from([0.1, 0.3, 0.5, 0.75, 0.9]) | st.floats(0.01, 0.99)


@st.composite
def any_shapes(draw):
    """Any rank from 0 to 4, small: dropout takes any shape."""
    rank = draw(st.integers(0, 4))
    return tuple(draw(st.lists(st.integers(1, 9 if rank > 2 else 70), min_size=rank, max_size=rank)))


def layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The values of ``x`` as contiguous, channels_last (4-D) or a non-contiguous view."""
    if kind == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if kind == "strided" and x.dim() >= 2:
        return x.transpose(0, -1).contiguous().transpose(0, -1)
    if kind == "strided" and x.dim() == 1:
        big = x.new_full((2 * x.numel(),), float("nan"))
        big[::2] = x
        return big[::2]
    return x.contiguous()


def nonzero_values(shape, seed, dtype, negative=True):
    """Finite nonzero values (so the kept mask is visible in the output)."""
    x = make_values(shape, "normal", seed, torch.float32)
    x = torch.where(x.abs() < 0.05, torch.full_like(x, 0.5), x)
    return (x if negative else x.abs()).to(dtype)


def recovered_mask(out, x):
    """Kept positions, where they can be seen: the output is nonzero exactly where the input was
    nonzero (after the ReLU for relu_dropout) and kept."""
    return out != 0


def run(path, op_name, x, p, seed, grad_out=None, training=True):
    with on_path(path):
        xk = x.detach().requires_grad_(grad_out is not None)
        out = OPS[op_name](xk, p, training, seed)
        grad = torch.autograd.grad(out, xk, grad_out)[0] if grad_out is not None else None
    return out.detach(), grad


def scale_tol(dtype):
    return TOLERANCES[dtype]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op_name", ["dropout", "relu_dropout"])
@draws.examples(20)
@given(shape=any_shapes(), dtype=draws.dtypes, p=probs, seed=draws.seeds, data_seed=draws.seeds,
       lay=st.sampled_from(["contiguous", "channels_last", "strided"]))
def test_dropout_matches_reference_with_recovered_mask(path, op_name, shape, dtype, p, seed, data_seed, lay):
    """Forward == dropout_with_mask(x, mask, p), backward == grad_out * mask / (1 - p) with the same
    mask (the backward regenerates exactly the forward's mask), output in the input's layout."""
    x = layout(nonzero_values(shape, data_seed, dtype), lay)
    g = make_grad(shape, data_seed, dtype)
    out, grad = run(path, op_name, x, p, seed, g)
    relu = op_name == "relu_dropout"
    xr = F.relu(x) if relu else x
    mask = recovered_mask(out, xr) | (xr == 0)  # unseen where relu(x) == 0: the output is 0 anyway
    name = f"{op_name} {path} {shape} {dtype} p={p} seed={seed} layout={lay}"
    ref = reference.dropout_with_mask(xr.float(), mask, p).to(dtype)
    assert_close_verbose(out, ref, scale_tol(dtype), name=name + " forward")
    assert_memory_format(out, x, name)
    ref_grad = reference.dropout_with_mask(g.float(), mask & (xr != 0 if relu else True), p).to(dtype)
    assert_close_verbose(grad, ref_grad, scale_tol(dtype), name=name + " backward")
    assert torch.equal(grad != 0, out != 0), name + ": backward mask != forward mask"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op_name", ["dropout", "relu_dropout"])
@pytest.mark.parametrize("lay,grad_lay", [("channels_last", "contiguous"), ("contiguous", "channels_last"),
                                          ("strided", "channels_last"), ("channels_last", "strided")])
def test_dropout_backward_mask_in_every_layout(path, op_name, lay, grad_lay):
    """The backward meets each element with the forward's mask whatever the layouts of the input and
    of grad_output (a mask regenerated in another memory order would not match)."""
    x = layout(nonzero_values((2, 5, 4, 7), 18, torch.float32), lay)
    g = layout(make_grad((2, 5, 4, 7), 18, torch.float32), grad_lay)
    out, grad = run(path, op_name, x, 0.5, seed=31, grad_out=g)
    relu = op_name == "relu_dropout"
    kept = out != 0
    assert torch.equal(grad != 0, kept), f"{op_name} {lay}/{grad_lay}: backward mask != forward mask"
    xr = F.relu(x) if relu else x
    assert_close_verbose(out, reference.dropout_with_mask(xr, kept | (xr == 0), 0.5),
                         TOLERANCES[torch.float32], name=f"{op_name} {lay} forward")
    assert_close_verbose(grad, reference.dropout_with_mask(g, kept, 0.5), TOLERANCES[torch.float32],
                         name=f"{op_name} {lay}/{grad_lay} backward")
    assert_memory_format(out, x, f"{op_name} {lay}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op_name", ["dropout", "relu_dropout"])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_keep_rate_within_6_sigma_everywhere(path, op_name, p):
    """Keep rate over 32768 elements and over each of its 8 chunks (a mask that repeats or freezes
    from one program to the next fails), and no two chunks share their mask."""
    n, chunks = 32768, 8
    x = torch.ones(n)
    out, _ = run(path, op_name, x, p, seed=2024)
    kept = (out != 0).float()
    for part, count in [("all", n)] + [(f"chunk {i}", n // chunks) for i in range(chunks)]:
        k = kept if part == "all" else kept.view(chunks, -1)[int(part.split()[1])]
        mean, sigma = count * (1 - p), math.sqrt(count * p * (1 - p))
        assert abs(float(k.sum()) - mean) <= 6 * sigma, \
            f"{op_name} p={p} {part}: kept {int(k.sum())} of {count}, expected {mean:.0f} +- {6 * sigma:.0f}"
    rows = kept.view(chunks, -1)
    for i in range(chunks):
        for j in range(i + 1, chunks):
            assert not torch.equal(rows[i], rows[j]), f"chunks {i} and {j} have the same mask"
    # neighbours independent: P(both kept) ~ (1-p)^2
    both = float((kept[1:] * kept[:-1]).sum())
    mean, sigma = (n - 1) * (1 - p) ** 2, math.sqrt((n - 1) * (1 - p) ** 2 * (1 - (1 - p) ** 2))
    assert abs(both - mean) <= 8 * sigma, f"adjacent kept pairs {both}, expected {mean:.0f}"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op_name", ["dropout", "relu_dropout"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dropout_scales_kept_values_by_one_over_keep_probability(path, op_name, dtype):
    x = torch.ones(4096, dtype=dtype)
    for p, scale in [(0.5, 2.0), (0.75, 4.0), (0.2, 1.25)]:
        out, grad = run(path, op_name, x, p, seed=7, grad_out=torch.ones_like(x))
        kept = out != 0
        assert 0 < int(kept.sum()) < 4096
        assert torch.equal(out[kept], torch.full_like(out[kept], scale)), f"p={p}: {out[kept][:5]}"
        assert torch.equal(grad[kept], torch.full_like(grad[kept], scale)), f"p={p} grad: {grad[kept][:5]}"
        assert torch.equal(grad[~kept], torch.zeros_like(grad[~kept]))


@pytest.mark.parametrize("path", PATHS)
def test_dropout_kept_negative_values(path):
    """Plain dropout keeps negative values (scaled) and sends their gradient back: a backward that
    rebuilt the mask as ``output > 0`` would drop them."""
    x = -torch.rand(8192) - 0.1
    g = torch.randn(8192)
    out, grad = run(path, "dropout", x, 0.4, seed=3, grad_out=g)
    kept = out != 0
    mean, sigma = 8192 * 0.6, math.sqrt(8192 * 0.24)
    assert abs(float(kept.sum()) - mean) <= 6 * sigma, f"kept {int(kept.sum())} negative values of 8192"
    assert (out[kept] < 0).all()
    assert_close_verbose(out, reference.dropout_with_mask(x, kept, 0.4), TOLERANCES[torch.float32],
                         name="dropout negative forward")
    assert_close_verbose(grad, reference.dropout_with_mask(g, kept, 0.4), TOLERANCES[torch.float32],
                         name="dropout negative backward")


@pytest.mark.parametrize("path", PATHS)
def test_relu_dropout_negative_values_give_zero_and_no_gradient(path):
    x = torch.linspace(-3, 3, 6001)
    out, grad = run(path, "relu_dropout", x, 0.5, seed=4, grad_out=torch.ones_like(x))
    assert torch.equal(out[x <= 0], torch.zeros_like(out[x <= 0]))
    assert torch.equal(grad[x <= 0], torch.zeros_like(grad[x <= 0]))
    kept = out != 0
    assert torch.equal(grad != 0, kept)
    assert_close_verbose(out, reference.dropout_with_mask(F.relu(x), kept, 0.5), TOLERANCES[torch.float32],
                         name="relu_dropout forward")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op_name", ["dropout", "relu_dropout"])
def test_dropout_same_seed_same_mask_different_seeds_different_masks(path, op_name):
    x = torch.ones(2, 3000)
    a, _ = run(path, op_name, x, 0.5, seed=123)
    b, _ = run(path, op_name, x, 0.5, seed=123)
    assert torch.equal(a, b), "same seed, different outputs"
    # the mask depends on the seed and position, not on the values
    y = torch.full_like(x, 3.0)
    c, _ = run(path, op_name, y, 0.5, seed=123)
    assert torch.equal(c != 0, a != 0), "same seed, different mask for other values"
    for s1, s2 in [(123, 124), (0, 1), (1, 2**32 + 1), (2**40, 2**40 + 7)]:
        m1 = run(path, op_name, x, 0.5, seed=s1)[0] != 0
        m2 = run(path, op_name, x, 0.5, seed=s2)[0] != 0
        agree = float((m1 == m2).float().mean())
        assert 0.4 < agree < 0.6, f"seeds {s1} and {s2}: masks agree on {agree:.3f} of elements (expect ~0.5)"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op_name", ["dropout", "relu_dropout"])
def test_dropout_seed_none_follows_manual_seed_without_reseeding(path, op_name):
    """seed=None draws from torch's generator: torch.manual_seed makes it reproducible, consecutive
    calls differ, torch.initial_seed() is untouched (no reseeding), and an explicit seed leaves the
    generator's state alone."""
    x = torch.ones(4096)
    state = torch.get_rng_state()
    try:
        torch.manual_seed(77)
        a1, _ = run(path, op_name, x, 0.5, seed=None)
        a2, _ = run(path, op_name, x, 0.5, seed=None)
        after = torch.rand(4)
        assert torch.initial_seed() == 77, f"the op reseeded the global generator ({torch.initial_seed()})"
        torch.manual_seed(77)
        b1, _ = run(path, op_name, x, 0.5, seed=None)
        b2, _ = run(path, op_name, x, 0.5, seed=None)
        assert torch.equal(a1, b1) and torch.equal(a2, b2), "torch.manual_seed does not reproduce the masks"
        assert not torch.equal(a1 != 0, a2 != 0), "consecutive calls with seed=None gave the same mask"
        assert torch.equal(after, torch.rand(4)), "the generator's stream differs after the same calls"
        torch.manual_seed(78)
        assert not torch.equal(run(path, op_name, x, 0.5, seed=None)[0], a1), "other manual_seed, same mask"
        before = torch.get_rng_state()
        run(path, op_name, x, 0.5, seed=5)
        assert torch.equal(torch.get_rng_state(), before), "an explicit seed changed the global generator"
    finally:
        torch.set_rng_state(state)


@pytest.mark.parametrize("op_name", ["dropout", "relu_dropout"])
@pytest.mark.parametrize("shape,lay", [((5000,), "contiguous"), ((2, 3, 17, 19), "channels_last"),
                                       ((40, 70), "strided")])
def test_dropout_triton_and_torch_paths_draw_the_same_mask(op_name, shape, lay):
    """kernels/dropout.py documents that its CPU path computes the kernel's Philox stream."""
    x = layout(nonzero_values(shape, 16, torch.float32), lay)
    a, _ = run("triton", op_name, x, 0.5, seed=2**33 + 5)
    b, _ = run("torch", op_name, x, 0.5, seed=2**33 + 5)
    assert torch.equal(a != 0, b != 0), f"{int((a != 0).ne(b != 0).sum())} of {a.numel()} mask bits differ"


# A plain-Python Philox4x32-10, independent of the module's: Random123's known-answer vectors pin it.
_M32 = 0xFFFFFFFF


def philox4x32_10(counter, key):
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0, p2 = 0xCD9E8D57 * c2, 0xD2511F53 * c0
        c0, c1, c2, c3 = (p0 >> 32) ^ c1 ^ k0, p0 & _M32, (p2 >> 32) ^ c3 ^ k1, p2 & _M32
        k0, k1 = (k0 + 0x9E3779B9) & _M32, (k1 + 0xBB67AE85) & _M32
    return c0, c1, c2, c3


def test_reference_philox_reproduces_random123_known_answers():
    assert philox4x32_10((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert philox4x32_10((_M32,) * 4, (_M32, _M32)) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)
    assert philox4x32_10((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == (
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)


def reference_keep(seed: int, index: int, p: float) -> bool:
    """Element ``index`` takes word index mod 4 of Philox at counter index div 4 (key = the seed)."""
    q = index // 4
    u = philox4x32_10((q & _M32, q >> 32, 0, 0), (seed & _M32, seed >> 32))[index % 4]
    return (u >> 1) >= min(round(p * 2.0**31), 2**31 - 1)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op_name", ["dropout", "relu_dropout"])
@pytest.mark.parametrize("seed", [0, 2**32 + 7, 2**62 + 12345])
def test_dropout_stream_is_word_i_mod_4_of_philox_at_counter_i_div_4(path, op_name, seed):
    n = 203  # not a multiple of 4: the last counter serves three elements
    out, _ = run(path, op_name, torch.ones(n), 0.5, seed=seed)
    expected = torch.tensor([reference_keep(seed, i, 0.5) for i in range(n)])
    assert torch.equal(out != 0, expected), f"{int((out != 0).ne(expected).sum())} of {n} elements differ"
    # with position, the counter is the index in the larger tensor (here past 2^34: a nonzero high word)
    row0, col0, width = 2**31 + 3, 8, 24
    out = run_position(path, op_name, torch.ones(2, 9), 0.5, seed, (row0, col0, width))
    expected = torch.tensor([[reference_keep(seed, (row0 + r) * width + col0 + c, 0.5) for c in range(9)]
                             for r in range(2)])
    assert torch.equal(out != 0, expected), f"position: {int((out != 0).ne(expected).sum())} elements differ"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op_name", ["dropout", "relu_dropout"])
def test_dropout_threshold_is_exact_at_the_boundary(path, op_name):
    """An element whose word sits exactly on the threshold is kept, one just below it is dropped: p is
    chosen from the element's own Philox word (p = h / 2^31 with h = word >> 1), so a threshold off by
    one in either direction changes that element's decision."""
    seed, n = 1234, 16
    words = [philox4x32_10((q, 0, 0, 0), (seed, 0))[j] >> 1 for q in range(n // 4) for j in range(4)]
    g = max(range(n), key=lambda i: words[i] if words[i] < 2**31 - 1 else -1)  # a word < 2^31 - 1
    h = words[g]
    for p, kept in ((h / 2.0**31, True), ((h + 1) / 2.0**31, False)):
        out, _ = run(path, op_name, torch.ones(n), p, seed=seed)
        assert bool(out[g] != 0) == kept, f"p = {p!r}: element {g} (word >> 1 = {h}) kept={bool(out[g] != 0)}"
        expected = torch.tensor([w >= round(p * 2.0**31) for w in words])
        assert torch.equal(out != 0, expected)


def run_position(path, op_name, x, p, seed, position):
    with on_path(path):
        return OPS[op_name](x, p, True, seed, position=position)


@pytest.mark.parametrize("op_name", ["dropout", "relu_dropout"])
@pytest.mark.parametrize("shape,position", [
    ((6, 40), (3, 8, 64)),  # aligned: one Philox call per four elements
    ((5, 7), (2, 3, 13)),  # a column and a width that are not multiples of 4: a call per element
    ((4, 12), (1, 0, 12)),  # a data shard: rows of the whole width
    ((2, 4100), (1, 4, 4108)),  # rows longer than one program's block (a row per several programs)
    ((3, 6), (2**31 - 1, 4, 12)),  # indices past 2^31 (int64 offsets) and past 2^34 (high counter word)
    ((3, 5), (2**30 + 1, 3, 11)),  # the same, unaligned
])
def test_dropout_triton_and_torch_paths_draw_the_same_mask_with_position(op_name, shape, position):
    x = nonzero_values(shape, 17, torch.float32, negative=False)
    a = run_position("triton", op_name, x, 0.5, 2**33 + 5, position)
    b = run_position("torch", op_name, x, 0.5, 2**33 + 5, position)
    assert torch.equal(a != 0, b != 0), f"{int((a != 0).ne(b != 0).sum())} of {a.numel()} mask bits differ"
    kept = float((a != 0).float().mean())
    assert 0.2 < kept < 0.8, kept


def test_dropout_int64_kernel_variant_draws_the_same_mask():
    """The BIG (int64 offsets and counters) variant of the forward kernel, which launches only past 2^31
    elements, run on a small tensor: the same output as the int32 variant."""
    if not DROPOUT.use_triton(torch.ones(1)):
        pytest.skip("needs the Triton interpreter")
    x = nonzero_values((5000,), 19, torch.float32)
    outs = []
    for big in (False, True):
        y = torch.empty_like(x)
        DROPOUT._dropout_fwd_kernel[(3,)](x, y, None, 2**40 + 3, x.numel(), 2**30, 2.0, 0, 0, 0, 0,
                                          APPLY_RELU=False, SEED_IN_MEMORY=False, REMAP=False, ALIGNED=True,
                                          BIG=big, BLOCK=2048)
        outs.append(y)
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0], kernels.dropout(x, 0.5, True, 2**40 + 3))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op_name", ["dropout", "relu_dropout"])
def test_dropout_int_seed_and_seed_tensor_draw_the_same_mask(path, op_name):
    x = nonzero_values((3, 500), 20, torch.float32)
    g = make_grad(x.shape, 20, torch.float32)
    a, ga = run(path, op_name, x, 0.5, seed=2**35 + 9, grad_out=g)
    b, gb = run(path, op_name, x, 0.5, seed=torch.tensor([2**35 + 9]), grad_out=g)
    assert torch.equal(a, b) and torch.equal(ga, gb)


@pytest.mark.parametrize("op_name", ["dropout", "relu_dropout"])
def test_dropout_int_seed_is_a_kernel_argument_not_a_tensor(op_name, monkeypatch):
    """An integer seed costs no host-to-device copy (and cannot break CUDA-graph capture): every launch,
    forward and backward, gets only data tensors and the seed as an int. seed=None passes the kernel an
    int64 seed tensor drawn on the data's device."""
    x = torch.randn(4, 256).requires_grad_()
    launches = []

    def no_tensor(*args, **kwargs):
        raise AssertionError("torch.tensor called")

    with recording(launches.append):
        monkeypatch.setattr(torch, "tensor", no_tensor)
        y = OPS[op_name](x, 0.5, True, 123)
        torch.autograd.grad(y, x, torch.ones_like(y))
        monkeypatch.undo()
    assert [launch.name for launch in launches] == (
        ["dropout_fwd", "dropout_fwd"] if op_name == "dropout" else ["dropout_fwd", "relu_dropout_bwd"])
    for launch in launches:
        tensors = [a for a in launch.args if isinstance(a, torch.Tensor)]
        assert len(tensors) == (2 if launch.name == "dropout_fwd" else 3), launch.args
        assert all(t.shape == x.shape for t in tensors), [t.shape for t in tensors]
    # every launch that draws the mask (relu_dropout's backward reads its output instead) gets the seed
    for launch in launches if op_name == "dropout" else launches[:1]:
        assert any(type(a) is int and a == 123 for a in launch.args), (launch.name, launch.args)
    launches.clear()
    with recording(launches.append):
        OPS[op_name](x, 0.5, True, None)
    seeds = [a for a in launches[0].args if isinstance(a, torch.Tensor) and a.shape != x.shape]
    assert len(seeds) == 1 and seeds[0].dtype == torch.int64 and seeds[0].numel() == 1
    assert seeds[0].device == x.device


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op_name", ["dropout", "relu_dropout"])
def test_dropout_int_seed_is_never_made_into_a_tensor(monkeypatch, path, op_name):
    """No tensor factory is called with an integer seed, forward or backward, on either path."""
    seed, made = 123, []

    def spy(name, factory):
        def wrapper(*args, **kwargs):
            flat = [v for a in args for v in (a if isinstance(a, (list, tuple)) else [a])]
            if any(type(v) is int and v == seed for v in flat):
                made.append((name, args))
            return factory(*args, **kwargs)
        return wrapper

    for name in ("tensor", "as_tensor", "full", "scalar_tensor"):
        monkeypatch.setattr(torch, name, spy(name, getattr(torch, name)))
    x = torch.randn(4, 37, requires_grad=True)
    with on_path(path):
        y = OPS[op_name](x, 0.5, True, seed)
        torch.autograd.grad(y, x, torch.ones_like(y))
    assert not made, f"{op_name} ({path}) made the seed into a tensor: {made}"


@pytest.mark.cuda
@pytest.mark.parametrize("op_name", ["dropout", "relu_dropout"])
def test_cuda_graph_captures_dropout_with_an_int_seed(op_name):
    """Forward and backward with an int seed captured in a CUDA graph (a host-to-device copy of the
    seed cannot be), replayed on new data: the eager call's output and gradient, the same mask."""
    fn, seed = OPS[op_name], 123
    x = torch.randn(8, 4096, device="cuda")
    g = torch.randn(8, 4096, device="cuda")
    static_x = x.clone().requires_grad_()

    def step():
        y = fn(static_x, 0.5, True, seed)
        (dx,) = torch.autograd.grad(y, static_x, g)
        return y, dx

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (compiles the kernels) outside the capture
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y, static_dx = step()
    for data in (x, torch.randn_like(x)):
        with torch.no_grad():
            static_x.copy_(data)
        graph.replay()
        torch.cuda.synchronize()
        xe = data.clone().requires_grad_()
        ye = fn(xe, 0.5, True, seed)
        (dxe,) = torch.autograd.grad(ye, xe, g)
        assert torch.equal(static_y, ye.detach()), f"{op_name}: replayed forward != eager"
        assert torch.equal(static_dx, dxe), f"{op_name}: replayed backward != eager"
    assert 0.3 < float((static_y == 0).float().mean()) < 0.8


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op_name", ["dropout", "relu_dropout"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dropout_identity_when_not_training_or_p_zero(path, op_name, dtype):
    x = make_values((2, 3, 5, 7), "special", 9, dtype)
    expected = F.relu(x) if op_name == "relu_dropout" else x
    g = make_grad(x.shape, 9, dtype)
    for p, training in [(0.0, True), (0.5, False), (1.0, False), (0.0, False)]:
        out, grad = run(path, op_name, x, p, seed=1, grad_out=g, training=training)
        assert_close_verbose(out, expected, TOLERANCES[dtype], name=f"{op_name} p={p} training={training}")
        assert torch.equal(out.nan_to_num(), expected.nan_to_num())
        expected_grad = torch.where(x > 0, g, torch.zeros_like(g)) if op_name == "relu_dropout" else g
        assert torch.equal(grad, expected_grad), f"{op_name} p={p} training={training} backward"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op_name", ["dropout", "relu_dropout"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dropout_p_one_gives_zeros(path, op_name, dtype):
    x = nonzero_values((3, 333), 10, dtype)
    out, grad = run(path, op_name, x, 1.0, seed=1, grad_out=torch.ones_like(x))
    assert torch.equal(out, torch.zeros_like(x)) and out.dtype == dtype
    assert torch.equal(grad, torch.zeros_like(x))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op_name", ["dropout", "relu_dropout"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_nan_inf_propagate_as_in_the_reference(path, op_name, dtype):
    """The mask depends on the seed and position only: take it from a finite input, then the output
    on NaN / inf inputs must equal dropout_with_mask's (NaN * 0 = NaN where dropped, as PyTorch's)."""
    x = make_values((4, 500), "special", 11, dtype)
    finite = torch.where(torch.isfinite(x) & (x != 0), x, torch.ones_like(x)).abs()
    mask = run(path, op_name, finite, 0.5, seed=99)[0] != 0
    out, _ = run(path, op_name, x, 0.5, seed=99)
    xr = F.relu(x) if op_name == "relu_dropout" else x
    ref = reference.dropout_with_mask(xr.float(), mask, 0.5).to(dtype)
    assert_close_verbose(out, ref, TOLERANCES[dtype], name=f"{op_name} nan/inf {dtype}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op_name", ["dropout", "relu_dropout"])
def test_dropout_tiny_shapes(path, op_name):
    """A scalar, one and three elements (empty ones: tests/test_op_contracts.py)."""
    for shape in [(), (1,), (3,)]:
        x = torch.full(shape, 2.0, requires_grad=True)
        with on_path(path):
            out = OPS[op_name](x, 0.5, True, 5)
            assert out.shape == x.shape and out.dtype == x.dtype
            out.sum().backward()
        assert x.grad.shape == x.shape
        assert ((out == 0) | (out == 4.0)).all()
        assert torch.equal(x.grad != 0, out != 0)


def test_dropout_compile_fullgraph_seeds_and_position():
    """torch.compile(fullgraph=True) with an integer seed, with position, and with seed=None: no graph
    break; the integer seeds give the eager outputs and gradients; seed=None gives a valid dropout whose
    backward uses the forward's mask."""
    torch._dynamo.reset()

    def f(x, z):
        seeded = []
        for fn in OPS.values():
            block = fn(x[:, 4:], 0.5, True, 77, position=(2, 4, 12))
            seeded.append(fn(x, 0.5, True, 1234) + 2.0 * block.sum(1, keepdim=True))
        return torch.stack(seeded), kernels.dropout(z, 0.5) + kernels.relu_dropout(z, 0.25)

    x = nonzero_values((3, 12), 21, torch.float32)
    z = torch.rand(4, 1000) + 0.5
    results = []
    for g in (f, torch.compile(f, backend="aot_eager", fullgraph=True)):
        xk, zk = x.clone().requires_grad_(), z.clone().requires_grad_()
        out, unseeded = g(xk, zk)
        (out.sum() + unseeded.sum()).backward()
        results.append((out.detach(), xk.grad, unseeded.detach(), zk.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    _, _, out, grad = results[1]
    # every element is z*(2*a + 4/3*b) for a, b in {0, 1}
    ratio = (out / z).flatten()
    allowed = torch.tensor([0.0, 2.0, 4.0 / 3.0, 2.0 + 4.0 / 3.0])
    assert ((ratio[:, None] - allowed).abs().min(dim=1).values < 1e-5).all()
    assert_close_verbose(grad, ratio.view_as(z), TOLERANCES[torch.float32], name="grad = mask * scale")
    both_dropped = float((ratio == 0).float().sum())  # probability 0.5 * 0.25
    assert abs(both_dropped - 500) <= 6 * (4000 * 0.125 * 0.875) ** 0.5, both_dropped


@pytest.mark.parametrize("path", ["triton", "torch"])
@pytest.mark.parametrize("op", ["dropout", "relu_dropout"])
def test_position_gives_the_larger_tensors_mask(path, op):
    """position=(row0, col0, width): a block of a larger (rows, width) tensor gets that tensor's mask for
    the same seed, forward and backward (how a tower or a data shard keeps the one-device masks)."""
    fn = getattr(kernels, op)
    x = torch.randn(6, 10) + 0.5
    ctx = kernels.triton_disabled() if path == "torch" else contextlib.nullcontext()
    with ctx:
        full = fn(x, 0.5, seed=11)
        blocks = [(slice(0, 6), slice(5, 10)), (slice(2, 4), slice(0, 5)), (slice(3, 6), slice(1, 8))]
        for rows, cols in blocks:
            part = x[rows, cols].clone().requires_grad_()
            y = fn(part, 0.5, seed=11, position=(rows.start, cols.start, 10))
            assert torch.equal(y, full[rows, cols]), (rows, cols)
            (g,) = torch.autograd.grad(y, part, torch.ones_like(y))
            assert torch.equal(g, (y != 0).to(g.dtype) * 2.0)
        assert not torch.equal(fn(x[:, 5:], 0.5, seed=11), full[:, 5:]), "without position: another mask"
        with pytest.raises(ValueError, match=op):
            fn(x, 0.5, seed=11, position=(0, 5, 10))  # 10 columns do not fit at column 5 of 10
        with pytest.raises(TypeError, match=op):
            fn(x, 0.5, seed=11, position=(0, 5))
