"""Inverted dropout whose mask is never stored: ``dropout`` and ``relu_dropout``.

The keep decision for element g (its index in memory order, or with ``position`` its index in the
larger tensor) is a pure function of (seed, g): Philox4x32-10 with key = the 64-bit seed and counter
= (q mod 2^32, q div 2^32, 0, 0) for q = g div 4 gives four 32-bit words, and element g takes word
u = g mod 4; keep = (u >> 1) >= round(p * 2^31), so P(keep) = 1 - p to within 2^-31. One Philox call
serves four neighbouring elements (a call is ~40 instructions: 10 rounds of two 32x32->64-bit
multiplies and two 3-input XORs).
Backward of ``dropout`` regenerates the mask from the seed (it saves at most 8 bytes); ``relu_dropout``
saves only its output y, since dx = dy / (1 - p) exactly where y > 0.
The plain-PyTorch path computes the same Philox stream, so CPU and GPU draw the same masks.

An integer seed reaches the kernel as a plain integer argument (no host-to-device copy, nothing to
break CUDA-graph capture); ``seed=None`` draws an int64 seed tensor on the device from torch's
generator, which the kernel reads.
"""

from __future__ import annotations

import torch

from ._common import (
    Config,
    cdiv,
    check_p,
    check_same_device,
    check_tensor,
    eager_autograd,
    fast_path,
    launch,
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
    from ._jit import _upcast

    @triton.jit
    def _philox4x32(k0, k1, c0, c1):
        """Philox4x32-10 of the counter (c0, c1, 0, 0) under the key (k0, k1): the four output words.

        uint32 tensors; each round's products are taken as 64-bit products of 32-bit words (one
        IMAD.WIDE.U32 gives both halves, where tl.math.umulhi and a low multiply take two)."""
        c2 = tl.zeros_like(c0)
        c3 = c2
        for _ in tl.static_range(10):
            p0 = c2.to(tl.uint64) * 0xCD9E8D57  # _ROUND_B
            p2 = c0.to(tl.uint64) * 0xD2511F53  # _ROUND_A
            c0 = (p0 >> 32).to(tl.uint32) ^ c1 ^ k0
            c2 = (p2 >> 32).to(tl.uint32) ^ c3 ^ k1
            c1 = p0.to(tl.uint32)
            c3 = p2.to(tl.uint32)
            k0 = k0 + 0x9E3779B9  # _KEY_A, wraps modulo 2^32
            k1 = k1 + 0xBB67AE85  # _KEY_B
        return c0, c1, c2, c3

    @triton.jit
    def _counter_words(q, BIG: tl.constexpr):
        """The counter's two low words for non-negative counters q (int32, or int64 when BIG)."""
        if BIG:
            return (q & 0xFFFFFFFF).to(tl.uint32), (q >> 32).to(tl.uint32)
        else:
            lo = q.to(tl.uint32)
            return lo, tl.zeros_like(lo)

    @triton.jit(do_not_specialize=["seed", "threshold"])  # never constants (1 would be)
    def _dropout_fwd_kernel(
        x_ptr,  # *T input, dense (flat), or with REMAP rows of `cols` elements
        y_ptr,  # *T output, same layout
        seed_ptr,  # *i64 (1,) the seed, read when SEED_IN_MEMORY; else None
        seed,  # the seed as an integer (when not SEED_IN_MEMORY)
        numel,  # elements
        threshold, scale,  # keep iff philox >> 1 >= threshold; kept values times 1 / (1 - p)
        cols, ncb, width, gofs,  # with REMAP: a program covers BLOCK columns of one row of x (`ncb`
        #                           programs per row); element (r, c) draws the counter of index
        #                           gofs + r * width + c of a larger (rows, width) tensor
        APPLY_RELU: tl.constexpr,  # relu before dropout
        SEED_IN_MEMORY: tl.constexpr,
        REMAP: tl.constexpr,
        ALIGNED: tl.constexpr,  # every program's first index is a multiple of 4 (always without REMAP)
        BIG: tl.constexpr,  # int64 offsets and counters (an index may reach 2^31)
        BLOCK: tl.constexpr,
    ):
        # The block as (BLOCK / 4, 4): row j holds the four elements of one Philox counter. Loads and
        # stores are then 4 elements wide (128 bits in float32, 64 in 16-bit types) and the four words
        # of a call land in the registers of the thread that owns the row, with no shuffle (a flat
        # BLOCK with 8-wide bfloat16 loads made Triton convert the words' layout through shared memory).
        G: tl.constexpr = BLOCK // 4
        pid = tl.program_id(0)
        if REMAP:
            r = pid // ncb  # per program, none per element (none at all where ncb == 1, a constant)
            start = (pid - r * ncb) * BLOCK
            limit = cols - start
            if BIG:
                r = r.to(tl.int64)
            base = r * cols + start  # memory offset of the block's first element
            first = gofs + r * width + start  # its index in the larger tensor
        else:
            if BIG:
                base = pid.to(tl.int64) * BLOCK
            else:
                base = pid * BLOCK
            limit = numel - base
            first = base
        grp = tl.arange(0, G)
        tile = (grp * 4)[:, None] + tl.arange(0, 4)[None, :]
        m = tile < limit
        x = _upcast(tl.load(x_ptr + (base + tile), mask=m, other=0.0))
        if APPLY_RELU:
            # NaN stays NaN as in torch.relu; one FMNMX.NAN where a compare and a select take two
            x = tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)
        if SEED_IN_MEMORY:
            s = tl.load(seed_ptr)
        else:
            s = seed.to(tl.int64)
        k0 = (s & 0xFFFFFFFF).to(tl.uint32)
        k1 = (s >> 32).to(tl.uint32)
        t2 = threshold.to(tl.uint32) * 2  # (u >> 1) >= threshold  <=>  u >= 2 * threshold
        if ALIGNED:
            lo, hi = _counter_words((first >> 2) + grp, BIG)
            u0, u1, u2, u3 = _philox4x32(k0, k1, lo, hi)
            f0 = tl.where(u0 >= t2, scale, 0.0)
            f1 = tl.where(u1 >= t2, scale, 0.0)
            f2 = tl.where(u2 >= t2, scale, 0.0)
            f3 = tl.where(u3 >= t2, scale, 0.0)
            # (G, 2, 2) -> (G, 4): column 2k + j is word 2k + j
            factor = tl.reshape(tl.join(tl.join(f0, f2), tl.join(f1, f3)), [G, 4])
        else:
            # a block that straddles Philox counters (position with a column or width not a multiple
            # of 4): one call per element, which takes its word
            g = first + tile
            lo, hi = _counter_words(g >> 2, BIG)
            u0, u1, u2, u3 = _philox4x32(k0, k1, lo, hi)
            w = g & 3
            u = tl.where(w == 0, u0, tl.where(w == 1, u1, tl.where(w == 2, u2, u3)))
            factor = tl.where(u >= t2, scale, 0.0)
        # x * 0 (not 0) where dropped: NaN and inf stay NaN, as in PyTorch's x * mask * scale
        y = x * factor
        tl.store(y_ptr + (base + tile), y.to(y_ptr.dtype.element_ty), mask=m)

    # relu_dropout backward: y = relu(x) * mask * scale, so d y / d x = scale exactly where y > 0
    # (kept and x > 0); zero elsewhere, NaN included (PyTorch's relu backward tests its output > 0).
    @triton.jit
    def _relu_dropout_bwd_kernel(
        dy_ptr,  # *T gradient of the output, dense, flat
        y_ptr,  # *T the forward's output, same layout
        dx_ptr,  # *T gradient of the input, same layout
        numel,  # elements
        scale,  # 1 / (1 - p)
        BIG: tl.constexpr,  # int64 offsets
        BLOCK: tl.constexpr,
    ):
        if BIG:
            base = tl.program_id(0).to(tl.int64) * BLOCK
        else:
            base = tl.program_id(0) * BLOCK
        offs = tl.arange(0, BLOCK)
        m = offs < numel - base
        dy = _upcast(tl.load(dy_ptr + (base + offs), mask=m, other=0.0))
        y = tl.load(y_ptr + (base + offs), mask=m, other=0.0)
        dx = tl.where(y > 0, dy * scale, 0.0)
        tl.store(dx_ptr + (base + offs), dx.to(dx_ptr.dtype.element_ty), mask=m)


# ------------------------------------------------------------------------------------ launchers

_CONFIG = Config(dict(BLOCK=2048), num_warps=4)  # 16 elements (four Philox calls) per thread
_BWD_CONFIG = Config(dict(BLOCK=2048), num_warps=4)
_REMAP_BLOCKS = (64, 4096)  # a REMAP program covers BLOCK columns of one row (16 per thread from 512)


def _remap_config(cols: int) -> Config:
    """A whole row per program up to 4096 columns (AlexNet's fc rows: 2048 or 4096), so that the row
    is the program id itself (the JIT turns ``ncb == 1`` into a constant: no division)."""
    block = min(_REMAP_BLOCKS[1], max(_REMAP_BLOCKS[0], triton.next_power_of_2(cols)))
    return Config(dict(BLOCK=block), num_warps=max(1, min(8, block // 512)))


_INT32_MAX = 2**31 - 1


def _threshold(p: float) -> int:
    return min(round(p * 2.0**31), 2**31 - 1)


def _philox4x32_torch(seed: int, q: torch.Tensor) -> tuple:
    """Philox4x32-10 of the counters (q mod 2^32, q div 2^32, 0, 0) under the key (seed mod 2^32,
    seed div 2^32), for an int64 tensor q >= 0, computed with int64 tensor ops (products of two 32-bit
    words fit the 64-bit wrap-around exactly; the high word is recovered with a shift and a mask).
    Returns the four output words as int64 tensors in [0, 2^32)."""
    c0, c1 = q & _MASK32, q >> 32
    c2 = torch.zeros_like(q)
    c3 = torch.zeros_like(q)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(10):
        p0, p2 = _ROUND_B * c2, _ROUND_A * c0  # exact modulo 2^64
        c0, c2 = ((p0 >> 32) & _MASK32) ^ c1 ^ k0, ((p2 >> 32) & _MASK32) ^ c3 ^ k1
        c1, c3 = p0 & _MASK32, p2 & _MASK32
        k0, k1 = (k0 + _KEY_A) & _MASK32, (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


def _philox_keep_torch(seed: int, idx: torch.Tensor, threshold: int) -> torch.Tensor:
    """The kernel's keep-mask for int64 element indices idx >= 0 (any shape): word idx mod 4 of the
    Philox call at counter idx div 4, one call per element."""
    words = torch.stack(_philox4x32_torch(seed, idx >> 2), dim=-1)
    u = words.gather(-1, (idx & 3).unsqueeze(-1)).squeeze(-1)
    return (u >> 1) >= threshold


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


def _keep_torch(seed: int, numel: int, remap, threshold: int, device) -> torch.Tensor:
    """The kernel's keep-mask over x in memory order, flat (numel,): one Philox call per four elements
    where the rows start at multiples of 4 in the indexed tensor, else ``_philox_keep_torch``."""
    if remap is None:
        q = torch.arange((numel + 3) // 4, dtype=torch.int64, device=device)
        u = torch.stack(_philox4x32_torch(seed, q), dim=-1).reshape(-1)[:numel]
        return (u >> 1) >= threshold
    cols, row0, col0, width = remap
    first = torch.arange(row0, row0 + numel // cols, dtype=torch.int64, device=device) * width + col0
    if col0 % 4 == 0 and width % 4 == 0:
        q = (first >> 2)[:, None] + torch.arange((cols + 3) // 4, dtype=torch.int64, device=device)
        u = torch.stack(_philox4x32_torch(seed, q), dim=-1).reshape(q.shape[0], -1)[:, :cols]
        return ((u >> 1) >= threshold).reshape(-1)
    idx = first[:, None] + torch.arange(cols, dtype=torch.int64, device=device)
    return _philox_keep_torch(seed, idx, threshold).reshape(-1)


def _launch_dropout(x: torch.Tensor, y: torch.Tensor, seed: torch.Tensor | None, seed_value: int, p: float,
                    relu: bool, remap) -> None:
    numel = x.numel()
    cfg = _CONFIG if remap is None else _remap_config(remap[0])
    block = cfg.constexprs["BLOCK"]
    if remap is None:
        grid = (cdiv(numel, block),)
        geometry = (0, 0, 0, 0)
        last, aligned = numel, True
    else:
        cols, row0, col0, width = remap
        rows = numel // cols
        ncb = cdiv(cols, block)
        grid = (rows * ncb,)
        geometry = (cols, ncb, width, row0 * width + col0)
        last, aligned = (row0 + rows) * width, col0 % 4 == 0 and width % 4 == 0
    big = max(numel, last) + block > _INT32_MAX
    launch("dropout_fwd", _dropout_fwd_kernel, grid,
           (x, y, seed, seed_value, numel, _threshold(p), 1.0 / (1.0 - p), *geometry), cfg, x.device,
           APPLY_RELU=relu, SEED_IN_MEMORY=seed is not None, REMAP=remap is not None, ALIGNED=aligned,
           BIG=big)


def _dropout_forward(x: torch.Tensor, seed: torch.Tensor | None, seed_value: int, p: float, relu: bool,
                     row0: int = 0, col0: int = 0, width: int = 0) -> torch.Tensor:
    op = "relu_dropout" if relu else "dropout"
    if seed is not None:
        check_same_device(op, input=x, seed=seed)
    remap = _remap(x, row0, col0, width)
    x = _dense(x) if remap is None else x.contiguous()  # positions count rows of the contiguous tensor
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    if p >= 1.0:
        return y.copy_(x * 0.0 if not relu else torch.relu(x) * 0.0)
    if not use_triton(x):
        s = int(seed.item()) if seed is not None else seed_value
        keep = _keep_torch(s, x.numel(), remap, _threshold(p), x.device)
        src = _memory_order(x)
        src = torch.relu(src) if relu else src
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        factor = torch.where(keep, 1.0 / (1.0 - p), 0.0).to(compute)
        _memory_order(y).copy_(src.to(compute) * factor)
        return y
    _launch_dropout(x, y, seed, seed_value, p, relu, remap)
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
    block = _BWD_CONFIG.constexprs["BLOCK"]
    launch("relu_dropout_bwd", _relu_dropout_bwd_kernel, (cdiv(y.numel(), block),),
           (dy, y, dx, y.numel(), scale), _BWD_CONFIG, y.device, BIG=y.numel() + block > _INT32_MAX)
    return dx


# ---------------------------------------------------------------------------------- registration
#
# The seed is either a tensor (seed=None draws one on the device; an int64 tensor the caller passes)
# or, with seed=None, the integer seed_value: an integer seed never becomes a tensor.


@torch.library.custom_op("alexnet_triton::dropout", mutates_args=())
def dropout_op(x: torch.Tensor, seed: torch.Tensor | None, p: float, row0: int = 0, col0: int = 0,
               width: int = 0, seed_value: int = 0) -> torch.Tensor:
    return _dropout_impl(x, seed, p, row0, col0, width, seed_value)


def _fake_output(x, row0, col0, width):
    return torch.empty_like(_dense(x) if _remap(x, row0, col0, width) is None else x.contiguous())


@dropout_op.register_fake
def _(x, seed, p, row0=0, col0=0, width=0, seed_value=0):
    return _fake_output(x, row0, col0, width)


def _dropout_setup_context(ctx, inputs, output):
    _, seed, p, row0, col0, width, seed_value = inputs
    ctx.save_for_backward(seed)  # the seed tensor (8 bytes) or None: the mask is regenerated from it
    ctx.args = (p, row0, col0, width, seed_value)
    ctx.channels_last = output.dim() == 4 and not output.is_contiguous()


def _dropout_backward(ctx, dy):
    (seed,) = ctx.saved_tensors
    # the same memory order as the forward, so element i meets the same Philox counter
    return (_dropout(_in_layout(dy, ctx.channels_last), seed, *ctx.args),) + (None,) * 6


def _dropout_impl(x, seed, p, row0, col0, width, seed_value):
    return _dropout_forward(x, seed, seed_value, p, False, row0, col0, width)


dropout_op.register_autograd(_dropout_backward, setup_context=_dropout_setup_context)
_dropout = fast_path(dropout_op, eager_autograd("Dropout", _dropout_impl, _dropout_setup_context,
                                                _dropout_backward).apply)


@torch.library.custom_op("alexnet_triton::relu_dropout", mutates_args=())
def relu_dropout_op(x: torch.Tensor, seed: torch.Tensor | None, p: float, row0: int = 0, col0: int = 0,
                    width: int = 0, seed_value: int = 0) -> torch.Tensor:
    return _relu_dropout_impl(x, seed, p, row0, col0, width, seed_value)


@relu_dropout_op.register_fake
def _(x, seed, p, row0=0, col0=0, width=0, seed_value=0):
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
    return (_relu_dropout_bwd(dy, y, ctx.p),) + (None,) * 6


def _relu_dropout_impl(x, seed, p, row0, col0, width, seed_value):
    return _dropout_forward(x, seed, seed_value, p, True, row0, col0, width)


relu_dropout_op.register_autograd(_relu_dropout_backward_fn, setup_context=_relu_dropout_setup_context)
_relu_dropout_bwd = fast_path(relu_dropout_backward_op, _relu_dropout_backward)
_relu_dropout = fast_path(relu_dropout_op, eager_autograd("ReluDropout", _relu_dropout_impl,
                                                          _relu_dropout_setup_context,
                                                          _relu_dropout_backward_fn).apply)


# ----------------------------------------------------------------------------------------- public


def _seed_args(seed, device) -> tuple[torch.Tensor | None, int]:
    """(seed tensor or None, integer seed) for the ops."""
    if seed is None:
        # from torch's generator for this device, on the device (no host sync, graph-safe):
        # torch.manual_seed makes runs reproducible, and the global RNG is advanced, never reseeded
        return torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device), 0
    if isinstance(seed, torch.Tensor):
        if seed.numel() != 1 or seed.dtype != torch.int64:
            raise TypeError(f"dropout: a seed tensor must hold one int64, got {seed.dtype} "
                            f"{tuple(seed.shape)}")
        return seed.reshape(1).to(device), 0
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"dropout: seed must be an int, an int64 tensor or None, got {type(seed).__name__}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"dropout: seed must be in [0, 2**63), got {seed}")
    return None, int(seed)


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

    ``seed``: an int in [0, 2^63) (passed to the kernel as an integer), a one-element int64 tensor,
    or None (a seed drawn on x's device from torch's generator).

    ``position=(row0, col0, width)``: x (rows of ``x.shape[-1]`` elements) is the block at row
    ``row0``, column ``col0`` of a larger (rows, width) tensor, and gets that tensor's mask for the
    same seed: a shard of a batch, or one tower's half of a layer, then drops exactly what the whole
    tensor on one device would."""
    check_tensor("dropout", x)
    p = check_p("dropout", p)
    pos = _position("dropout", x, position)
    if not training or p == 0.0:
        return x
    seed_t, seed_value = _seed_args(seed, x.device)
    return _dropout(x, seed_t, p, *pos, seed_value)


def relu_dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, seed=None, *,
                 position=None) -> torch.Tensor:
    """``dropout(relu(x), p, training, seed, position=position)`` in one kernel each way, saving only
    its output."""
    check_tensor("relu_dropout", x)
    p = check_p("relu_dropout", p)
    pos = _position("relu_dropout", x, position)
    if not training:
        p = 0.0
    seed_t, seed_value = _seed_args(seed if p > 0 else 0, x.device)
    return _relu_dropout(x, seed_t, p, *pos, seed_value)
