"""Shared helpers for the op tests: tolerances, a verbose assert, hypothesis strategies, paths.

Conventions (see ../shared/DESIGN.md and issue 2):
- Half-precision results are compared with the reference op run in float32 on the same, already
  rounded, inputs and then rounded to the dtype (the kernels accumulate in float32).
- Forward NaN / inf positions must equal the reference's exactly; finite values within the dtype's
  tolerance below.
- Tensors stay small: under TRITON_INTERPRET=1 every Triton program instance costs 5-10 ms.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import torch
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

import kernels

# ----------------------------------------------------------------------------------------------
# Hypothesis profile
# ----------------------------------------------------------------------------------------------

# HYPOTHESIS_PROFILE=no-shrink reports the first failing example without shrinking it (each shrink
# step reruns interpreted kernels): for quick checks of a change, e.g. mutation runs.
settings.register_profile("no-shrink", phases=[Phase.explicit, Phase.reuse, Phase.generate])
if os.environ.get("HYPOTHESIS_PROFILE") == "no-shrink":
    settings.load_profile("no-shrink")

#: Settings for the equivalence tests. No deadline: the first call of a kernel compiles / the
#: interpreter's speed varies with the load on the machine.
FAST = settings(max_examples=15, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


#: The exhaustive tier (tests/conftest.py): every hypothesis test draws its full number of examples.
EXHAUSTIVE = os.environ.get("ALEXNET_EXHAUSTIVE", "0") not in ("", "0")


def examples(n: int) -> settings:
    """``n`` fresh examples in the exhaustive tier, a quarter of them (at least 3) in the default one (each
    run still draws new ones; the explicit @example cases always run)."""
    return settings(FAST, max_examples=n if EXHAUSTIVE else max(3, n // 4))


# ----------------------------------------------------------------------------------------------
# Tolerances
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tol:
    atol: float
    rtol: float
    reason: str


#: Tolerance for computed (not selected) values: LRN outputs, dropout's scaled values, gradients.
TOLERANCES: dict[torch.dtype, Tol] = {
    torch.float32: Tol(
        atol=1e-6, rtol=1e-5,
        reason="float32 in and out: the window sum of squares is added in another order and "
               "s**-beta is computed as exp2(-beta*log2(s)) (GPU fast log2/exp2) instead of std::pow; "
               "a few ulps (1 ulp = 1.2e-7 relative), 1e-5 leaves a margin of ~80 ulps"),
    torch.float16: Tol(
        atol=1e-5, rtol=2 * 2.0 ** -10,
        reason="float32 math rounded once to float16 (ulp <= 2**-10 relative); the reference is the "
               "float32 op on the same inputs, rounded once: both within 1/2 ulp of the float32 "
               "value, 2 ulps allowed. atol covers results in float16's subnormal range (< 6.1e-5)"),
    torch.bfloat16: Tol(
        atol=1e-5, rtol=2 * 2.0 ** -7,
        reason="float32 math rounded once to bfloat16 (ulp <= 2**-7 relative): 2 ulps as for float16; "
               "atol for results that cancel to near zero"),
    torch.float64: Tol(
        atol=1e-10, rtol=1e-9,
        reason="float64 (gradcheck inputs): only the order of additions differs"),
}

#: Max-pool selects one of its inputs: its forward is exact in every dtype.
EXACT = Tol(atol=0.0, rtol=0.0, reason="max-pool selects an input value: no arithmetic, exact")


def grad_tol(dtype: torch.dtype, expected: torch.Tensor) -> Tol:
    """Gradient tolerance: LRN's backward subtracts two terms of the size of the largest gradient,
    so an element can cancel to much less than the rounding error of its terms. Each element may
    differ by the dtype's rtol times the largest |gradient| (a normwise bound), plus atol."""
    tol = TOLERANCES[dtype]
    finite = expected[torch.isfinite(expected)]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    return Tol(atol=tol.atol + 2 * tol.rtol * scale, rtol=tol.rtol,
               reason=tol.reason + "; normwise for cancellation in the backward")


def pool_grad_tol(dtype, kernel, stride, grad_out) -> Tol:
    """Exact where no two windows can send their gradient to the same input (stride >= kernel); else
    an input's gradient is a float32 sum of up to ceil(k/s)^2 terms added in another order, rounded
    once to the dtype: 1 ulp of the dtype plus the float32 sum's rounding (normwise)."""
    kh, kw = pair(kernel)
    sh, sw = pair(stride, kernel)
    overlap = math.ceil(kh / sh) * math.ceil(kw / sw)
    if overlap == 1:
        return EXACT
    gmax = float(grad_out.abs().max()) if grad_out.numel() else 0.0
    return Tol(atol=overlap * torch.finfo(torch.float32).eps * gmax, rtol=torch.finfo(dtype).eps,
               reason=f"up to {overlap} window gradients summed in float32 in another order")


# ----------------------------------------------------------------------------------------------
# Verbose comparison
# ----------------------------------------------------------------------------------------------

def _fmt_index(flat: int, shape) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), tuple(shape))) if len(shape) else ()


def assert_close_verbose(actual: torch.Tensor, expected: torch.Tensor, tol: Tol, *, name: str = "",
                         equal_nan: bool = True, check_dtype: bool = True, max_report: int = 6) -> None:
    """Like torch.testing.assert_close, but the message says where and by how much it differs:
    number of mismatches, max abs / rel error with its index and both values, the first few
    mismatches, NaN / inf position mismatches. Infinities must be equal exactly."""
    where = f"[{name}] " if name else ""
    assert actual.shape == expected.shape, f"{where}shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if check_dtype:
        assert actual.dtype == expected.dtype, f"{where}dtype {actual.dtype} != {expected.dtype}"
    if actual.numel() == 0:
        return
    a = actual.detach().to(torch.float64)  # compared on the tensors' device, reported from the CPU
    e = expected.detach().to(a.device, torch.float64)
    a_nan, e_nan = torch.isnan(a), torch.isnan(e)
    same = a == e  # covers equal infinities
    diff = (a - e).abs()
    close = same | (diff <= tol.atol + tol.rtol * e.abs())
    close &= torch.isfinite(a) == torch.isfinite(e)  # inf vs huge finite never passes
    if equal_nan:
        close |= a_nan & e_nan
    bad = ~close
    if not bad.any():
        return
    lines = [f"{where}{int(bad.sum())} of {a.numel()} elements differ "
             f"(shape {tuple(a.shape)}, atol={tol.atol:g}, rtol={tol.rtol:g}: {tol.reason})"]
    nan_mismatch = a_nan != e_nan
    if nan_mismatch.any():
        idx = nan_mismatch.flatten().nonzero()[:max_report, 0].tolist()
        lines.append(f"  NaN position mismatch at {int(nan_mismatch.sum())} elements, e.g. " + ", ".join(
            f"{_fmt_index(i, a.shape)}: got {a.flatten()[i].item()!r} expected {e.flatten()[i].item()!r}"
            for i in idx))
    both_finite = torch.isfinite(a) & torch.isfinite(e)
    if both_finite.any():
        d = torch.where(both_finite, diff, torch.zeros_like(diff))
        rel = d / e.abs().clamp_min(torch.finfo(torch.float64).tiny)
        i = int(d.flatten().argmax())
        j = int(torch.where(bad & both_finite, rel, torch.zeros_like(rel)).flatten().argmax())
        lines.append(f"  max abs error {d.flatten()[i].item():.6g} at {_fmt_index(i, a.shape)}: "
                     f"got {a.flatten()[i].item()!r}, expected {e.flatten()[i].item()!r}")
        lines.append(f"  max rel error (among mismatches) {rel.flatten()[j].item():.6g} at "
                     f"{_fmt_index(j, a.shape)}: got {a.flatten()[j].item()!r}, "
                     f"expected {e.flatten()[j].item()!r}")
    idx = bad.flatten().nonzero()[:max_report, 0].tolist()
    lines.append("  first mismatches: " + ", ".join(
        f"{_fmt_index(i, a.shape)}: got {a.flatten()[i].item()!r} expected {e.flatten()[i].item()!r}"
        for i in idx))
    raise AssertionError("\n".join(lines))


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns of ``t`` (NaN payloads folded to 0): tells 0.0 from -0.0."""
    itype = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.detach().cpu().nan_to_num(0.0).contiguous().view(itype)


def assert_memory_format(out: torch.Tensor, x: torch.Tensor, name: str) -> None:
    """Output in the input's memory format (checked where the input's format is unambiguous)."""
    if x.dim() != 4 or out.numel() == 0:
        return
    cl = torch.channels_last
    if x.is_contiguous() and not x.is_contiguous(memory_format=cl):
        assert out.is_contiguous(), f"[{name}] contiguous input, output strides {out.stride()}"
    elif x.is_contiguous(memory_format=cl) and not x.is_contiguous():
        assert out.is_contiguous(memory_format=cl), \
            f"[{name}] channels_last input, output strides {out.stride()} (shape {tuple(out.shape)})"


# ----------------------------------------------------------------------------------------------
# Reference helpers
# ----------------------------------------------------------------------------------------------

def accum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def ref_forward_backward(fn, x: torch.Tensor, grad_out: torch.Tensor | None, *args, **kwargs):
    """Run the reference ``fn`` on ``x`` upcast to float32 (same already-rounded values, same memory
    layout), round the output and the input gradient to ``x.dtype``."""
    xr = x.detach().to(accum_dtype(x.dtype)).requires_grad_(grad_out is not None)
    out = fn(xr, *args, **kwargs)
    grad = None
    if grad_out is not None:
        (grad,) = torch.autograd.grad(out, xr, grad_out.to(out.dtype))
        grad = grad.to(x.dtype)
    return out.detach().to(x.dtype), grad


def op_forward_backward(fn, x: torch.Tensor, grad_out_fn, *args, **kwargs):
    """Run the op under test on ``x`` (its layout kept); ``grad_out_fn(out)`` gives the shared
    grad_output, or None for forward only. Also checks that the op leaves its input unchanged."""
    before = x.detach().clone()
    xk = x.detach().requires_grad_(grad_out_fn is not None)
    out = fn(xk, *args, **kwargs)
    g = grad = None
    if grad_out_fn is not None:
        g = grad_out_fn(out)
        (grad,) = torch.autograd.grad(out, xk, g)
    assert torch.equal(x.detach().isnan(), before.isnan()) and torch.equal(
        x.detach().nan_to_num(), before.nan_to_num()), "the op modified its input"
    return out.detach(), grad, g


# ----------------------------------------------------------------------------------------------
# Paths: Triton kernels (the interpreter on CPU) and the plain-PyTorch CPU fallback
# ----------------------------------------------------------------------------------------------

PATHS = ["triton", "torch"]


@contextlib.contextmanager
def on_path(path: str):
    if path == "triton":
        yield
    else:
        with kernels.triton_disabled():
            yield


def custom_op(name: str):
    """``torch.ops.alexnet_triton.<name>.default``."""
    return getattr(torch.ops.alexnet_triton, name).default


# ----------------------------------------------------------------------------------------------
# Strategies: dtypes, memory formats, shapes, values
# ----------------------------------------------------------------------------------------------

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
dtypes = st.sampled_from(FLOAT_DTYPES)

MEMORY_FORMATS = ["contiguous", "channels_last", "sliced", "transposed"]
memory_formats = st.sampled_from(MEMORY_FORMATS)


def to_memory_format(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """The same values as ``x`` (4-D) in layout ``fmt``: contiguous NCHW, channels_last, a sliced
    view (every other channel, a padded row: neither layout), or an H/W-transposed view."""
    if fmt == "contiguous":
        return x.contiguous()
    if fmt == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    n, c, h, w = x.shape
    if fmt == "sliced":
        big = x.new_full((n, 2 * c, h, w + 3), float("nan"))
        big[:, ::2, :, 1:w + 1] = x
        return big[:, ::2, :, 1:w + 1]
    if fmt == "transposed":
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    raise ValueError(fmt)


CHANNEL_EDGES = [31, 32, 33, 40, 65]


@st.composite
def nchw_shapes(draw, max_n=2, max_c=24, min_hw=1, max_hw=15):
    """Small NCHW shapes: tiny, odd, non-powers-of-two, spatial 1, few channels. Kept small so an
    interpreted kernel launches tens of programs, not hundreds."""
    n = draw(st.integers(1, max_n))
    # few channels, any channels, and counts around the 32-channel chunks that NCHW kernels walk
    c = draw(st.one_of(st.integers(1, 6), st.integers(1, max_c), st.sampled_from(CHANNEL_EDGES)))
    h = draw(st.integers(min_hw, max_hw))
    w = draw(st.integers(min_hw, max_hw))
    return (n, c, h, w)


VALUE_KINDS = ["normal", "wide", "ties", "special"]


def make_values(shape, kind: str, seed: int, dtype: torch.dtype = torch.float32,
                scale: float = 1.0) -> torch.Tensor:
    """Deterministic test values, already rounded to ``dtype``:
    normal:  N(0, scale^2)
    wide:    N(0, 1) times a random power of ten in [1e-3, 1e2] per element
    ties:    small integers in [-3, 3] (many exact ties and zeros, exact in every dtype)
    special: normal with zeros, -0.0, +-inf and NaN sprinkled in (~5% each)
    nonpositive: -|N(0, scale^2)| with 20% +0.0, 20% -0.0 and 5% positive values, so that after a ReLU
             most windows hold only zeros and the sign of a pooled zero is decided by the first-maximum
             rule (relu(-0.5) = +0.0, relu(-0.0) = -0.0)"""
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        x = torch.randn(shape, generator=g) * scale
    elif kind == "wide":
        x = torch.randn(shape, generator=g) * 10.0 ** torch.randint(-3, 3, shape, generator=g).float()
    elif kind == "ties":
        x = torch.randint(-3, 4, shape, generator=g).float()
    elif kind == "special":
        x = torch.randn(shape, generator=g) * scale
        u = torch.rand(shape, generator=g)
        x = torch.where(u < 0.05, torch.zeros_like(x), x)
        x = torch.where((u >= 0.05) & (u < 0.10), torch.full_like(x, -0.0), x)
        x = torch.where((u >= 0.10) & (u < 0.15), torch.full_like(x, float("inf")), x)
        x = torch.where((u >= 0.15) & (u < 0.20), torch.full_like(x, float("-inf")), x)
        x = torch.where((u >= 0.20) & (u < 0.25), torch.full_like(x, float("nan")), x)
    elif kind == "nonpositive":  # most windows hold nothing but zeros after a ReLU
        x = -torch.randn(shape, generator=g).abs() * scale
        u = torch.rand(shape, generator=g)
        x = torch.where(u < 0.2, torch.zeros_like(x), x)
        x = torch.where((u >= 0.2) & (u < 0.4), torch.full_like(x, -0.0), x)
        x = torch.where(u >= 0.95, torch.rand(shape, generator=g) + 0.5, x)
    else:
        raise ValueError(kind)
    return x.to(dtype)


def make_grad(shape, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """A shared random grad_output in ``dtype``, never zero (a zero would hide a kept element)."""
    g = torch.Generator().manual_seed(seed + 7919)
    out = torch.randn(shape, generator=g).to(dtype)
    return out.masked_fill(out == 0, 1.0)


seeds = st.integers(0, 2**31 - 1)
value_kinds = st.sampled_from(VALUE_KINDS)

# LRN parameters: even sizes, sizes larger than C; alphas large enough that the cross-channel
# term of the backward matters at the dtype's precision.
lrn_sizes = st.one_of(st.just(5), st.integers(1, 9))
lrn_alphas = st.sampled_from([1e-4, 1e-2, 0.1, 1.0])
lrn_betas = st.sampled_from([0.75, 0.5, 1.0, 0.3])
lrn_ks = st.sampled_from([2.0, 1.0, 0.5])


@st.composite
def pool_params(draw, max_k=4):
    """kernel_size / stride / padding as ints or pairs (stride None = kernel_size), padding <= k/2."""
    kh = draw(st.integers(1, max_k))
    kw = draw(st.one_of(st.just(kh), st.integers(1, max_k)))
    sh = draw(st.integers(1, 4))
    sw = draw(st.one_of(st.just(sh), st.integers(1, 4)))
    ph = draw(st.integers(0, kh // 2))
    pw = draw(st.one_of(st.just(min(ph, kw // 2)), st.integers(0, kw // 2)))
    square = kh == kw and sh == sw and ph == pw
    as_int = square and draw(st.booleans())
    kernel = kh if as_int else (kh, kw)
    if as_int and sh == kh and draw(st.booleans()):
        stride = None
    else:
        stride = sh if as_int else (sh, sw)
    padding = ph if as_int else (ph, pw)
    return kernel, stride, padding


def pair(v, default=None):
    if v is None:
        v = default
    return (v, v) if isinstance(v, int) else tuple(v)


def pool_out_size(h, w, kernel, stride, padding):
    kh, kw = pair(kernel)
    sh, sw = pair(stride, kernel)
    ph, pw = pair(padding)
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


@st.composite
def pool_shapes(draw, kernel, padding, max_n=2, max_c=12, max_hw=15):
    """An NCHW shape whose pooled output is at least 1x1."""
    kh, kw = pair(kernel)
    ph, pw = pair(padding)
    n = draw(st.integers(1, max_n))
    c = draw(st.integers(1, max_c))
    h = draw(st.integers(max(1, kh - 2 * ph), max_hw))
    w = draw(st.integers(max(1, kw - 2 * pw), max_hw))
    return (n, c, h, w)


def ambiguous_windows(y: torch.Tensor, kernel, stride, padding, dtype: torch.dtype,
                      ties: bool = False) -> torch.Tensor:
    """Bool mask over the pooled output: windows of ``y`` (float32, the reference LRN output) whose
    winner is decided by rounding: a runner-up within a few ulps of the maximum but not equal to it.
    Exact ties (from equal inputs) are not ambiguous: they must go to the first maximum. The fused
    op's gradient may legitimately go to either element of an ambiguous window. ``ties``: count exact
    ties of the reference as ambiguous too (on a GPU the op's LRN values, with fast 1/sqrt, may split a
    tie of PyTorch's values computed from different inputs by an ulp)."""
    kh, kw = pair(kernel)
    sh, sw = pair(stride, kernel)
    ph, pw = pair(padding)
    n, c, h, w = y.shape
    yp = torch.nn.functional.pad(y.float(), (pw, pw, ph, ph), value=float("-inf"))
    win = yp.unfold(2, kh, sh).unfold(3, kw, sw)  # (N, C, Ho, Wo, kh, kw)
    win = win.reshape(*win.shape[:4], kh * kw)
    m = win.max(dim=-1, keepdim=True).values
    rel = 8 * (TOLERANCES[dtype].rtol if dtype != torch.float32 else 1e-5)
    near = win >= m - rel * m.abs()
    if ties:
        return near.sum(dim=-1) > 1
    return (near & (win != m)).any(dim=-1)


def saved_storages(fn, x):
    """Storages saved for backward by ``fn(x)``, each counted once: ({data_ptr: (nbytes, dtype, shape)},
    fn's output)."""
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = (s.nbytes(), t.dtype, tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x)
    return storages, out
