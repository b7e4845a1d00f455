"""Inverted dropout whose mask is never stored: ``dropout`` and ``relu_dropout``.

The keep decision for element i (its index in memory order) is a pure function of (seed, i):
Philox4x32-10 with key = the 64-bit seed and counter = (i mod 2^32, i div 2^32, 0, 0); the first
output word u gives keep = (u >> 1) >= round(p * 2^31), so P(keep) = 1 - p to within 2^-31.
Backward of ``dropout`` regenerates the mask from the seed (it saves 8 bytes); ``relu_dropout``
saves only its output y, since dx = dy / (1 - p) exactly where y > 0.
The plain-PyTorch path computes the same Philox stream, so CPU and GPU draw the same masks.
"""

from __future__ import annotations

import torch

from ._common import (
    Config,
    check_p,
    check_same_device,
    check_tensor,
    launch,
    register_kernel,
    tl,
    triton,
    use_triton,
)

# Philox4x32 constants (Salmon et al., SC'11), as in Triton's tl.philox
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF

# ------------------------------------------------------------------------------------- kernels

if triton is not None:
    from ._jit import _relu, _upcast

    @triton.jit
    def _keep(seed, offs, threshold):
        """Keep-mask for flat int64 indices offs: Philox(seed; lo, hi, 0, 0) >> 1 >= threshold."""
        lo = (offs & 0xFFFFFFFF).to(tl.uint32)
        hi = (offs >> 32).to(tl.uint32)
        zero = lo * 0
        u, _, _, _ = tl.philox(seed, lo, hi, zero, zero)
        return (u >> 1).to(tl.int32, bitcast=True) >= threshold

    @triton.jit
    def _dropout_fwd_kernel(
        x_ptr,  # *T input, dense, any shape (flat)
        y_ptr,  # *T output, same layout
        seed_ptr,  # *i64 (1,) the seed
        numel,  # elements
        threshold, scale,  # keep iff philox >> 1 >= threshold; kept values times 1 / (1 - p)
        cols, row0, col0, width,  # with REMAP: element (r, c) of x seen as rows of `cols` draws the
        #                            counter (row0 + r) * width + col0 + c of a larger (rows, width) tensor
        APPLY_RELU: tl.constexpr,  # relu before dropout
        REMAP: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = offs < numel
        x = _upcast(tl.load(x_ptr + offs, mask=m, other=0.0))
        if APPLY_RELU:
            x = _relu(x)
        counter = offs
        if REMAP:
            r = offs // cols
            counter = (r + row0) * width + col0 + (offs - r * cols)
        keep = _keep(tl.load(seed_ptr), counter, threshold)
        # x * 0 (not 0) where dropped: NaN and inf stay NaN, as in PyTorch's x * mask * scale
        y = x * tl.where(keep, scale, 0.0)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=m)

    # relu_dropout backward: y = relu(x) * mask * scale, so d y / d x = scale exactly where y > 0
    # (kept and x > 0); zero elsewhere, NaN included (PyTorch's relu backward tests its output > 0).
    @triton.jit
    def _relu_dropout_bwd_kernel(
        dy_ptr,  # *T gradient of the output, dense, flat
        y_ptr,  # *T the forward's output, same layout
        dx_ptr,  # *T gradient of the input, same layout
        numel,  # elements
        scale,  # 1 / (1 - p)
        BLOCK: tl.constexpr,
    ):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = offs < numel
        dy = _upcast(tl.load(dy_ptr + offs, mask=m, other=0.0))
        y = tl.load(y_ptr + offs, mask=m, other=0.0)
        dx = tl.where(y > 0, dy * scale, 0.0)
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=m)


# ------------------------------------------------------------------------------------ launchers

_CONFIG = Config(dict(BLOCK=1024), num_warps=4)


def _threshold(p: float) -> int:
    return min(round(p * 2.0**31), 2**31 - 1)


def _philox_keep_torch(seed: int, idx: torch.Tensor, threshold: int) -> torch.Tensor:
    """The kernel's keep-mask for int64 counters idx, computed with int64 tensor ops (products of two
    32-bit words fit the 64-bit wrap-around exactly; the high word is recovered with a shift and a
    mask)."""
    c0, c1 = idx & _MASK32, idx >> 32
    c2 = torch.zeros_like(idx)
    c3 = torch.zeros_like(idx)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(10):
        p0, p2 = _ROUND_B * c2, _ROUND_A * c0  # exact modulo 2^64
        c0, c2 = ((p0 >> 32) & _MASK32) ^ c1 ^ k0, ((p2 >> 32) & _MASK32) ^ c3 ^ k1
        c1, c3 = p0 & _MASK32, p2 & _MASK32
        k0, k1 = (k0 + _KEY_A) & _MASK32, (k1 + _KEY_B) & _MASK32
    return (c0 >> 1) >= threshold


def _dense(x: torch.Tensor) -> torch.Tensor:
    """Elementwise ops run over memory order: keep a dense channels_last tensor as it is."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def _in_layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """t dense in the layout whose memory order the mask was drawn over."""
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t.contiguous()


def _memory_order(t: torch.Tensor) -> torch.Tensor:
    """A flat view of a dense tensor in memory order."""
    return (t.permute(0, 2, 3, 1) if t.dim() == 4 and not t.is_contiguous() else t).reshape(-1)


def _remap(x: torch.Tensor, row0: int, col0: int, width: int):
    """None when the counters are the flat indices, else (cols, row0, col0, width)."""
    cols = x.shape[-1] if x.dim() else 1
    if width == 0 or (row0, col0, width) == (0, 0, cols):
        return None
    return cols, row0, col0, width


def _counters(numel: int, remap, device) -> torch.Tensor:
    idx = torch.arange(numel, dtype=torch.int64, device=device)
    if remap is None:
        return idx
    cols, row0, col0, width = remap
    r = torch.div(idx, cols, rounding_mode="floor")
    return (r + row0) * width + col0 + (idx - r * cols)


def _dropout_forward(x: torch.Tensor, seed: torch.Tensor, p: float, relu: bool, row0: int = 0, col0: int = 0,
                     width: int = 0) -> torch.Tensor:
    check_same_device("relu_dropout" if relu else "dropout", input=x, seed=seed)
    remap = _remap(x, row0, col0, width)
    x = _dense(x) if remap is None else x.contiguous()  # positions count rows of the contiguous tensor
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    if p >= 1.0:
        return y.copy_(x * 0.0 if not relu else torch.relu(x) * 0.0)
    scale = 1.0 / (1.0 - p)
    if not use_triton(x):
        keep = _philox_keep_torch(int(seed.item()), _counters(x.numel(), remap, x.device), _threshold(p))
        src = _memory_order(x)
        src = torch.relu(src) if relu else src
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        factor = torch.where(keep, scale, 0.0).to(compute)
        _memory_order(y).copy_(src.to(compute) * factor)
        return y
    grid = (triton.cdiv(x.numel(), _CONFIG.constexprs["BLOCK"]),)
    launch("dropout_fwd", _dropout_fwd_kernel, grid,
           (x, y, seed, x.numel(), _threshold(p), scale, *(remap or (1, 0, 0, 0))), _CONFIG, x.device,
           APPLY_RELU=relu, REMAP=remap is not None)
    return y


def _relu_dropout_backward(dy: torch.Tensor, y: torch.Tensor, p: float) -> torch.Tensor:
    check_same_device("relu_dropout", grad=dy, output=y)
    y = _dense(y)
    dy = _in_layout(dy, y.dim() == 4 and not y.is_contiguous())
    dx = torch.empty_like(y)
    if y.numel() == 0:
        return dx
    if p >= 1.0:
        return dx.zero_()
    scale = 1.0 / (1.0 - p)
    if not use_triton(y):
        return dx.copy_(torch.where(y > 0, dy * scale, torch.zeros_like(dy)))
    grid = (triton.cdiv(y.numel(), _CONFIG.constexprs["BLOCK"]),)
    launch("relu_dropout_bwd", _relu_dropout_bwd_kernel, grid, (dy, y, dx, y.numel(), scale), _CONFIG,
           y.device)
    return dx


# ---------------------------------------------------------------------------------- registration


@torch.library.custom_op("alexnet_triton::dropout", mutates_args=())
def dropout_op(x: torch.Tensor, seed: torch.Tensor, p: float, row0: int = 0, col0: int = 0,
               width: int = 0) -> torch.Tensor:
    return _dropout_forward(x, seed, p, False, row0, col0, width)


def _fake_output(x, row0, col0, width):
    return torch.empty_like(_dense(x) if _remap(x, row0, col0, width) is None else x.contiguous())


@dropout_op.register_fake
def _(x, seed, p, row0=0, col0=0, width=0):
    return _fake_output(x, row0, col0, width)


def _dropout_setup_context(ctx, inputs, output):
    _, seed, p, row0, col0, width = inputs
    ctx.save_for_backward(seed)  # 8 bytes: the mask is regenerated from it
    ctx.args = (p, row0, col0, width)
    ctx.channels_last = output.dim() == 4 and not output.is_contiguous()


def _dropout_backward(ctx, dy):
    (seed,) = ctx.saved_tensors
    # the same memory order as the forward, so element i meets the same Philox counter
    return dropout_op(_in_layout(dy, ctx.channels_last), seed, *ctx.args), None, None, None, None, None


dropout_op.register_autograd(_dropout_backward, setup_context=_dropout_setup_context)


@torch.library.custom_op("alexnet_triton::relu_dropout", mutates_args=())
def relu_dropout_op(x: torch.Tensor, seed: torch.Tensor, p: float, row0: int = 0, col0: int = 0,
                    width: int = 0) -> torch.Tensor:
    return _dropout_forward(x, seed, p, True, row0, col0, width)


@relu_dropout_op.register_fake
def _(x, seed, p, row0=0, col0=0, width=0):
    return _fake_output(x, row0, col0, width)


@torch.library.custom_op("alexnet_triton::relu_dropout_backward", mutates_args=())
def relu_dropout_backward_op(dy: torch.Tensor, y: torch.Tensor, p: float) -> torch.Tensor:
    return _relu_dropout_backward(dy, y, p)


@relu_dropout_backward_op.register_fake
def _(dy, y, p):
    return torch.empty_like(_dense(y))


def _relu_dropout_setup_context(ctx, inputs, output):
    ctx.save_for_backward(output)  # the next linear layer saves this same tensor anyway
    ctx.p = inputs[2]


def _relu_dropout_backward_fn(ctx, dy):
    (y,) = ctx.saved_tensors
    return relu_dropout_backward_op(dy, y, ctx.p), None, None, None, None, None


relu_dropout_op.register_autograd(_relu_dropout_backward_fn, setup_context=_relu_dropout_setup_context)


# ----------------------------------------------------------------------------------------- public


def _seed_tensor(seed, device) -> torch.Tensor:
    if seed is None:
        # from torch's generator for this device: torch.manual_seed makes runs reproducible, and the
        # global RNG is advanced, never reseeded
        return torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device)
    if isinstance(seed, torch.Tensor):
        if seed.numel() != 1 or seed.dtype != torch.int64:
            raise TypeError(f"dropout: a seed tensor must hold one int64, got {seed.dtype} "
                            f"{tuple(seed.shape)}")
        return seed.reshape(1).to(device)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"dropout: seed must be an int, an int64 tensor or None, got {type(seed).__name__}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"dropout: seed must be in [0, 2**63), got {seed}")
    return torch.tensor([seed], dtype=torch.int64, device=device)


def _position(op: str, x: torch.Tensor, position) -> tuple[int, int, int]:
    if position is None:
        return 0, 0, 0
    if (not isinstance(position, (tuple, list)) or len(position) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in position)):
        raise TypeError(f"{op}: position must be (row0, col0, width) ints, got {position!r}")
    row0, col0, width = position
    cols = x.shape[-1] if x.dim() else 1
    if row0 < 0 or col0 < 0 or col0 + cols > width:
        raise ValueError(f"{op}: position {tuple(position)} does not hold rows of {cols} elements")
    return row0, col0, width


def dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, seed=None, *,
            position=None) -> torch.Tensor:
    """Inverted dropout (kept values times 1 / (1 - p)) with a counter-based mask: nothing but the
    seed is kept for backward. ``training=False`` or ``p=0`` returns x; ``p=1`` gives ``x * 0``.

    ``position=(row0, col0, width)``: x (rows of ``x.shape[-1]`` elements) is the block at row
    ``row0``, column ``col0`` of a larger (rows, width) tensor, and gets that tensor's mask for the
    same seed: a shard of a batch, or one tower's half of a layer, then drops exactly what the whole
    tensor on one device would."""
    check_tensor("dropout", x)
    p = check_p("dropout", p)
    pos = _position("dropout", x, position)
    if not training or p == 0.0:
        return x
    return dropout_op(x, _seed_tensor(seed, x.device), p, *pos)


def relu_dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, seed=None, *,
                 position=None) -> torch.Tensor:
    """``dropout(relu(x), p, training, seed, position=position)`` in one kernel each way, saving only
    its output."""
    check_tensor("relu_dropout", x)
    p = check_p("relu_dropout", p)
    pos = _position("relu_dropout", x, position)
    if not training:
        p = 0.0
    return relu_dropout_op(x, _seed_tensor(seed if p > 0 else 0, x.device), p, *pos)


# ------------------------------------------------------------------------- compile-test signatures

if triton is not None:
    register_kernel("dropout_fwd", _dropout_fwd_kernel,
                    [Config({**_CONFIG.constexprs, "APPLY_RELU": r, "REMAP": m}, _CONFIG.num_warps)
                     for r in (False, True) for m in (False, True)],
                    lambda dtype: {"x_ptr": f"*{dtype}", "y_ptr": f"*{dtype}", "seed_ptr": "*i64",
                                   "numel": "i64", "threshold": "i32", "scale": "fp32", "cols": "i64",
                                   "row0": "i64", "col0": "i64", "width": "i64",
                                   "APPLY_RELU": "constexpr", "REMAP": "constexpr", "BLOCK": "constexpr"})
    register_kernel("relu_dropout_bwd", _relu_dropout_bwd_kernel, [_CONFIG],
                    lambda dtype: {"dy_ptr": f"*{dtype}", "y_ptr": f"*{dtype}", "dx_ptr": f"*{dtype}",
                                   "numel": "i64", "scale": "fp32", "BLOCK": "constexpr"})
