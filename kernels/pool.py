"""Max-pooling: ``max_pool2d`` and ``relu_max_pool2d`` (= ``max_pool2d(relu(x))``).

Forward keeps, per pooled output, the position of the maximum inside its window as one byte
(kh * KW + kw; int32 for larger windows) instead of PyTorch's int64 flat index. Backward is a gather:
every input position looks at the few windows that can contain it, so it is deterministic and needs no
atomics. ``relu_max_pool2d`` saves the same byte; where its window's maximum is not positive the byte
holds a sentinel (255; -1 in int32; so uint8 only up to 255-element windows) that matches no window
position: PyTorch's ReLU backward, ``threshold_backward(grad, relu(x), 0)``, passes the gradient where
relu(x) > 0 or is NaN and nowhere else, and the window's maximum is relu(x) at its argmax. Both ops
share the backward kernels.

PyTorch's rules, kept exactly: the window's maximum starts at -inf with the index of its first
in-bounds position; a value replaces it when ``v > max or isnan(v)`` (so ties go to the first
maximum in row-major order and the last NaN wins); padding never wins.

How the kernels run (NCHW and channels_last alike). A program owns 128 "lanes" (channels_last: lanes
times a tile of channels, contiguous in memory: vector loads and stores) and walks down the planes: a
lane is one (plane, column) pair, decoded once per program with a multiply-high division (``_magic``),
and the loop over rows neither divides nor masks. Lanes past the end are clamped onto the last one, so
that loads need no masks. Strides come from the shape and layout (NCHW: C*H*W, H*W, W, 1;
channels_last: H*W*C, 1, W*C, C), never from ``x.stride()``. Offsets are int32 below 2^31 elements;
``I64`` makes the planes' offsets int64 (tensors of 2^31 elements or more), ``BIG`` every offset
(an image of 2^31 elements or more).

Forward, separable: a lane is (plane, output column) and walks down the output rows. For each window row
it takes the maximum along the row (value and kw, by PyTorch's rule), then the maximum over the rows.
This is the element PyTorch's row-major scan picks: without NaN the scan keeps the first occurrence of
the window's maximum M, which lies in the first row that holds M, at that row's first M; the row pass
finds that column and the strict ``>`` across rows keeps the first such row. With NaN the scan ends on
the last NaN, which is the last NaN of the last row that holds one; a row's result is NaN exactly when
the row holds a NaN, and NaN always replaces, so the passes end on it too. Padding, and the rows and
columns past the input of ceil_mode's last window (MH, MW), are excluded by the in-bounds masks, and a
window of -inf keeps the initial index, the first in-bounds position, in both
orders. With kernel = stride + 1 (AlexNet's 3x3 stride 2) the last row of one window is the first of
the next: its row maximum is carried to the next trip, so each input row is read once per output row
pair. Windows of more than 32 elements use runtime loops in PyTorch's row-major order instead.

ReLU without padding is applied after the pooling: max over relu(x) is relu(max over x) with the same
argmax (and NaN) wherever that maximum is positive or NaN; where it is not, every relu value of the
window is a zero, the first one wins the tie, and it is -0.0 exactly when the window's first value is
-0.0 (relu(-0.0) = -0.0, relu(negative) = +0.0); the argmax is then the sentinel. With padding each
loaded value is relu'd.

Backward for kernel <= 2 * stride (AlexNet's 3x3/2, 2x2/2): a lane owns NB side-by-side blocks of
SH x SW inputs (one window stride each; NB = 2 in NCHW) of one plane and walks down the rows of blocks.
The windows that can contain a block's inputs are its own (b, c) and, where kernel > stride, the
windows before it, (b - 1, c), (b, c - 1) and (b - 1, c - 1); the lane loads its row of windows once per
trip (the column before its first block included) and carries it to the next. Each window's argmax byte
is compared with each position it could name inside the blocks; the gradient is the sum of the
matching windows' gradients in PyTorch's order (row-major over the windows), in float32 (float64 for
float64). Block rows below the last row of windows (at most 2) get the carried row's gradient or zeros.
Other configurations use a general gather: a lane is (plane, input column), walking down the input
rows and looking at the ceil(KH/SH) x ceil(KW/SW) windows around each input.
"""

from __future__ import annotations

import torch

from ._common import (
    Config,
    cdiv,
    check_same_device,
    check_tensor,
    dense,
    eager_autograd,
    fast_path,
    launch,
    memory_format,
    tl,
    triton,
    use_triton,
)
from ._pooling import (
    argmax_sentinel,
    check_pool_args,
    input_grad,
    pool_backward_torch,
    pool_forward_torch,
    pooled_outputs,
    window_masks,
)

# ------------------------------------------------------------------------------------- kernels

if triton is not None:
    from ._jit import _acc_zeros, _offset, _upcast

    @triton.jit
    def _wide(v, BIG: tl.constexpr):
        # int64 when offsets inside one image may pass 2^31 (also makes a constexpr a tensor)
        if BIG:
            return v + tl.zeros([], tl.int64)
        else:
            return v

    @triton.jit
    def _channel_tile(C, BLOCK_C: tl.constexpr, EVEN_C: tl.constexpr):
        """channels_last: (lane-block index, channels, channel mask) of this program, channel tiles
        varying fastest."""
        pid = tl.program_id(0)
        n_ct = tl.cdiv(C, BLOCK_C)
        pid_q = pid // n_ct
        c = (pid - pid_q * n_ct) * BLOCK_C + tl.arange(0, BLOCK_C)
        if EVEN_C:  # C % BLOCK_C == 0: contiguous channels, vector loads
            c_ok = c >= 0
        else:  # channels past C read channel C - 1
            c_ok = c < C
            c = tl.minimum(c, C - 1)
        return pid_q, c, c_ok

    @triton.jit
    def _lanes(pid_q, Q, D, D_M, D_S, BLOCK_Q: tl.constexpr, BIG: tl.constexpr):
        """This program's lanes q (clamped to Q - 1 so that lanes past the end load in bounds), whether
        each is real, and (q // D, q % D), once per program. Below 2^31 lanes the quotient is
        umulhi(2q, D_M) >> D_S (Granlund and Montgomery's multiply-high division, see ``_magic``)."""
        q = _wide(pid_q, BIG) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        ok = q < Q
        q = tl.minimum(q, Q - 1)
        if BIG:
            hi = q // D
        else:
            hi = (tl.umulhi(q.to(tl.uint32) * 2, D_M.to(tl.uint32)) >> D_S).to(tl.int32)
        return ok, hi, q - hi * D

    @triton.jit
    def _neg_inf(ptr):
        # -inf shaped like ptr, in the compare dtype of its elements (float64 or float32)
        return _upcast(tl.full(ptr.shape, float("-inf"), tl.float32).to(ptr.dtype.element_ty))

    @triton.jit
    def _load(ptr, mask, MASKED: tl.constexpr, RELU: tl.constexpr):
        # compared in float32 (float64 for float64): exact, and the interpreter compares bfloat16 as integers
        if MASKED:
            v = _upcast(tl.load(ptr, mask=mask, other=float("-inf")))
        else:
            v = _upcast(tl.load(ptr))
        if RELU:
            v = tl.where(v < 0, 0.0, v)  # as torch.relu: keeps NaN and -0.0, negatives become +0.0
        return v

    @triton.jit
    def _row_max(ptr, s_w, row_ok, iw0, W, kw0, BASE: tl.constexpr, KW: tl.constexpr, MW: tl.constexpr,
                 MASK_ROW: tl.constexpr, RELU: tl.constexpr):
        """(maximum, BASE + kw of its position, the row's first value) along one window row, by PyTorch's
        rule: a value replaces the maximum when ``v > max or isnan(v)``; columns in the padding never win
        and a row of -inf keeps the first in-bounds column kw0. Rows in the padding (``row_ok`` false) load
        nothing. MW: some window has columns outside the image (padding, or ceil_mode's last window). (The
        first value only without MW.)"""
        if not MW:  # every column of a window is in bounds: start from the first one
            best = _load(ptr, row_ok, MASK_ROW, RELU)
            first = best
            arg = tl.full(best.shape, BASE, tl.int32)
            for kw in tl.static_range(1, KW):
                v = _load(ptr + kw * s_w, row_ok, MASK_ROW, RELU)
                take = (v > best) | (v != v)
                best = tl.where(take, v, best)
                arg = tl.where(take, BASE + kw, arg)
        else:
            best = _neg_inf(ptr)
            arg = tl.zeros(ptr.shape, tl.int32) + (kw0 + BASE)
            for kw in tl.static_range(KW):
                iw = iw0 + kw
                ok = (iw >= 0) & (iw < W)
                if MASK_ROW:
                    ok = ok & row_ok
                v = _load(ptr + kw * s_w, ok, True, RELU)
                take = ok & ((v > best) | (v != v))
                best = tl.where(take, v, best)
                arg = tl.where(take, BASE + kw, arg)
            first = best
        return best, arg, first

    @triton.jit
    def _pool_fwd_kernel(
        x_ptr,  # *T (N, C, H, W) input, NCHW or channels_last (dense)
        y_ptr,  # *T (N, C, OH, OW) pooled output, x's layout
        am_ptr,  # *u8|i32 (N, C, OH, OW) argmax inside the window, kh * KW + kw (RELU: sentinel -1 / 255)
        C, H, W, OH, OW,
        Q,  # lanes: N * C * OW (NCHW) or N * OW (channels_last, times the channels)
        D_M, D_S,  # q // OW = umulhi(2q, D_M) >> D_S
        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
        PH: tl.constexpr, PW: tl.constexpr,
        MH: tl.constexpr, MW: tl.constexpr,  # windows reach past the rows / columns
        CL: tl.constexpr,  # channels_last
        RELU: tl.constexpr,  # pool relu(x)
        BIG: tl.constexpr,  # int64 offsets inside an image (and everywhere)
        I64: tl.constexpr,  # int64 plane offsets (the tensor has 2^31 elements or more)
        UNROLL: tl.constexpr,  # small window: unrolled, separable; else runtime loops over the window
        CARRY: tl.constexpr,  # UNROLL and KH == SH + 1: the last window row is the next window's first
        BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
        EVEN_C: tl.constexpr,  # channels_last: C % BLOCK_C == 0
    ):
        if CL:
            pid_q, c, c_ok = _channel_tile(C, BLOCK_C, EVEN_C)
        else:
            pid_q = tl.program_id(0)
        # lane = (plane, output column); plane = (n, c) in NCHW, n in channels_last
        lane_ok, plane, ow = _lanes(pid_q, Q, OW, D_M, D_S, BLOCK_Q, BIG)
        if CL:
            s_w = C
            o_w = C
        else:
            s_w = 1
            o_w = 1
        s_h = _wide(W * s_w, BIG)
        o_h = _wide(OW * o_w, BIG)
        iw0 = (ow * SW - PW)[:, None]  # first column of the lane's window (negative in the padding)
        kw0 = tl.maximum(-iw0, 0).to(tl.int32)  # its first in-bounds column
        x_off = (_offset(plane, I64) * H * s_h + ow * (SW * s_w) - PW * s_w)[:, None]
        o_off = (_offset(plane, I64) * OH * o_h + ow * o_w)[:, None]
        if CL:
            x_off = x_off + c[None, :]
            o_off = o_off + c[None, :]
            ok = lane_ok[:, None] & c_ok[None, :]
        else:
            ok = lane_ok[:, None]
        x_lane = x_ptr + x_off
        y_lane = y_ptr + o_off
        am_lane = am_ptr + o_off

        # ReLU without padding: pool x, then relu the result (see the module's docstring); else relu each
        # value loaded
        POST: tl.constexpr = RELU and not MH and not MW and UNROLL
        RELU_EACH: tl.constexpr = RELU and not POST
        if CARRY:  # the first row of window 0: in the padding when PH > 0
            if PH == 0:
                top_v, top_a, top_f = _row_max(x_lane, s_w, True, iw0, W, kw0, 0, KW, MW, False, RELU_EACH)
            else:
                top_v = _neg_inf(x_lane)
                top_a = tl.zeros(x_lane.shape, tl.int32) + kw0
                top_f = top_v
        for oh in range(OH):
            ih0 = _wide(oh, BIG) * SH - PH
            if UNROLL:
                if PH > 0:
                    best = _neg_inf(x_lane)
                    arg = tl.zeros(x_lane.shape, tl.int32) + kw0 + (tl.maximum(-ih0, 0) * KW).to(tl.int32)
                for r in tl.static_range(KH):
                    ih = ih0 + r
                    rok = (ih >= 0) & (ih < H)
                    if CARRY and r == 0:
                        h = top_v
                        a = top_a
                        f = top_f
                    else:
                        h, a, f = _row_max(x_lane + ih * s_h, s_w, rok, iw0, W, kw0, r * KW, KW, MW, MH,
                                           RELU_EACH)
                    if r == 0 and PH == 0:
                        best = h
                        arg = a
                        first = f  # the window's first value
                    else:
                        take = (h > best) | (h != h)
                        if MH:  # rows outside the image never win (-inf, or 0 after a ReLU)
                            take = take & rok
                        best = tl.where(take, h, best)
                        arg = tl.where(take, a, arg)
                    if CARRY and r == KH - 1:
                        top_v = h
                        top_a = a - r * KW
                        top_f = f
            else:  # large windows: a row-major scan, as PyTorch's
                best = _neg_inf(x_lane)
                arg = tl.zeros(x_lane.shape, tl.int32) + kw0 + (tl.maximum(-ih0, 0) * KW).to(tl.int32)
                for kh in range(KH):
                    ih = ih0 + kh
                    row = x_lane + ih * s_h
                    rok = (ih >= 0) & (ih < H)
                    for kw in range(KW):
                        iw = iw0 + kw
                        m = rok & (iw >= 0) & (iw < W)
                        v = _load(row + kw * s_w, m, True, RELU_EACH)
                        take = m & ((v > best) | (v != v))
                        best = tl.where(take, v, best)
                        arg = tl.where(take, kh * KW + kw, arg)
            if RELU:
                none = best <= 0  # ReLU's backward passes nothing there: a position that matches none
                arg = tl.where(none, -1, arg)
                if POST:  # relu(x)'s maximum is then a zero: relu of the window's first value (ties)
                    best = tl.where(none, tl.where(first == 0, first, 0.0), best)
            o_row = _wide(oh, BIG) * o_h
            tl.store(y_lane + o_row, best.to(y_ptr.dtype.element_ty), mask=ok)
            tl.store(am_lane + o_row, arg.to(am_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _pick(w: tl.constexpr, vl, vm, vr):
        # the window w columns from the lane's first block: -1, 0 or 1
        if w < 0:
            return vl
        elif w == 0:
            return vm
        else:
            return vr

    @triton.jit
    def _block_rows(dx_base, ih0, s_h, s_w, H, W, ix0, ok, al, dl, am, dm, ar, dr,
                    pal, pdl, pam, pdm, par, pdr,
                    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PW: tl.constexpr,
                    DH: tl.constexpr, DW: tl.constexpr, NB: tl.constexpr, CUR: tl.constexpr,
                    CHECK_FROM: tl.constexpr):
        """Store the gradient of one row of the lane's NB blocks: inputs (ih0 + j, ix0 + k*SW + i), j < SH,
        i < SW. Block k's windows are the lane's windows k - dw (dw <= DW): (al, dl) the one before the
        first block, (am, dm) the first block's, (ar, dr) the second's, in this row of windows, and the
        previous row's (pa*, pd*, DH). A window that does not exist holds a position that matches nothing
        (127) or, before the first row, -1. CUR false: this row of windows does not exist. Rows j >=
        CHECK_FROM may lie outside [0, H)."""
        for j in tl.static_range(SH):
            ih = ih0 + j
            dx_row = dx_base + j * s_h
            if j >= CHECK_FROM:
                row_ok = (ih >= 0) & (ih < H)
            for k in tl.static_range(NB):
                for i in tl.static_range(SW):
                    g = _acc_zeros(dx_base, dx_base)
                    first = True
                    # windows in row-major order, the previous row's first: PyTorch's order of the sum
                    for ddh in tl.static_range(DH + 1):
                        for ddw in tl.static_range(DW + 1):
                            dh = DH - ddh
                            dw = DW - ddw
                            kh = j + dh * SH
                            kw = i + dw * SW
                            if kh < KH and kw < KW and (CUR or dh == 1):
                                if dh == 0:
                                    a = _pick(k - dw, al, am, ar)
                                    d = _pick(k - dw, dl, dm, dr)
                                else:
                                    a = _pick(k - dw, pal, pam, par)
                                    d = _pick(k - dw, pdl, pdm, pdr)
                                if first:
                                    g = tl.where(a == kh * KW + kw, d, 0.0)
                                    first = False
                                else:
                                    g = tl.where(a == kh * KW + kw, g + d, g)
                    m = ok & (ix0 + (k * SW + i) < W)
                    if PW > 0:
                        m = m & (ix0 + (k * SW + i) >= 0)
                    if j >= CHECK_FROM:
                        m = m & row_ok
                    tl.store(dx_row + (k * SW + i) * s_w, g.to(dx_base.dtype.element_ty), mask=m)

    @triton.jit
    def _pool_bwd_block_kernel(
        dy_ptr,  # *T (N, C, OH, OW) gradient of the pooled output
        am_ptr,  # *u8|i32 (N, C, OH, OW) argmax from the forward, dy's layout
        dx_ptr,  # *T (N, C, H, W) gradient of the input, dy's layout
        C, H, W, OH, OW,
        NBH,  # rows of input blocks: (H - 1 + PH) // SH + 1 (>= OH)
        NL,  # lanes per row of blocks: cdiv((W - 1 + PW) // SW + 1, NB)
        Q,  # lanes: N * C * NL (NCHW) or N * NL (channels_last, times the channels)
        D_M, D_S,  # q // NL = umulhi(2q, D_M) >> D_S
        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
        PH: tl.constexpr, PW: tl.constexpr,
        CL: tl.constexpr, BIG: tl.constexpr, I64: tl.constexpr,
        MH: tl.constexpr,  # some window has rows outside the image (padding or ceil_mode)
        NB: tl.constexpr,  # blocks per lane, side by side (1 or 2)
        BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
        EVEN_C: tl.constexpr,  # channels_last: C % BLOCK_C == 0
    ):
        """kernel <= 2 * stride. Block (b, cb) = input rows b*SH - PH + [0, SH), columns cb*SW - PW + [0, SW).
        Window (oh, ow) covers rows oh*SH - PH + [0, KH): input row b*SH - PH + j is in window b - d at
        kh = j + d*SH, for d in {0, DH} with kh < KH (DH = (KH - 1) // SH <= 1); columns alike. A lane owns
        blocks cb0 .. cb0 + NB - 1 of one plane and walks down the rows of blocks, carrying the previous
        row of windows; block rows b < OH read their own row of windows, the rows after only the carried."""
        DH: tl.constexpr = (KH - 1) // SH
        DW: tl.constexpr = (KW - 1) // SW
        pid = tl.program_id(0)
        if CL:
            n_ct = tl.cdiv(C, BLOCK_C)
            pid_q = pid // n_ct
            c = (pid - pid_q * n_ct) * BLOCK_C + tl.arange(0, BLOCK_C)
        else:
            pid_q = pid
        lane_ok, plane, cl = _lanes(pid_q, Q, NL, D_M, D_S, BLOCK_Q, BIG)
        cb = cl * NB  # the lane's first block column
        if CL:
            s_w = C
        else:
            s_w = 1
        s_h = _wide(W * s_w, BIG)
        o_h = _wide(OW * s_w, BIG)
        ix0 = (cb * SW - PW)[:, None]  # the lane's first input column
        vl = ((cb >= 1) & (cb <= OW))[:, None]  # window columns cb - 1, cb, cb + 1 exist
        vm = (cb < OW)[:, None]
        vr = (cb + 1 < OW)[:, None]
        o_off = (_offset(plane, I64) * OH * o_h + cb * s_w)[:, None]
        x_off = (_offset(plane, I64) * H * s_h)[:, None] + ix0 * s_w
        if CL:
            o_off = o_off + c[None, :]
            x_off = x_off + c[None, :]
            if EVEN_C:  # C % BLOCK_C == 0: no channel masks, vector loads and stores
                ok = lane_ok[:, None]
            else:
                c_ok = c < C
                ok = lane_ok[:, None] & c_ok[None, :]
                vl = vl & c_ok[None, :]
                vm = vm & c_ok[None, :]
                vr = vr & c_ok[None, :]
        else:
            ok = lane_ok[:, None]
        dx_lane = dx_ptr + x_off
        am_lane = am_ptr + o_off
        dy_lane = dy_ptr + o_off
        # the carried row of windows b - 1 (none before the first row)
        pal = tl.full(dx_lane.shape, -1, tl.int32)
        pam = pal
        par = pal
        pdl = _acc_zeros(pal, dy_ptr)
        pdm = pdl
        pdr = pdl
        # rows of blocks b < OH may leave [0, H) only with padding, ceil_mode's last window or a kernel
        # shorter than stride + PH; the blocks after them start inside
        CHECK_FROM: tl.constexpr = 0 if MH or PH + SH > KH else SH
        am_p = am_lane  # row b of windows, row b of blocks: pointers carried down the plane
        dy_p = dy_lane
        dx_p = dx_lane - PH * s_h
        for b in range(OH):
            # a missing window (before the first column, past the last) reads as position 127: no match
            am = tl.load(am_p, mask=vm, other=127).to(tl.int32)
            dm = _upcast(tl.load(dy_p, mask=vm))
            if DW == 1:
                al = tl.load(am_p - s_w, mask=vl, other=127).to(tl.int32)
                dl = _upcast(tl.load(dy_p - s_w, mask=vl))
            else:
                al = am
                dl = dm
            if NB == 2:
                ar = tl.load(am_p + s_w, mask=vr, other=127).to(tl.int32)
                dr = _upcast(tl.load(dy_p + s_w, mask=vr))
            else:
                ar = am
                dr = dm
            _block_rows(dx_p, _wide(b, BIG) * SH - PH, s_h, s_w, H, W, ix0, ok, al, dl, am, dm, ar, dr,
                        pal, pdl, pam, pdm, par, pdr, KH, KW, SH, SW, PW, DH, DW, NB, True, CHECK_FROM)
            if DH == 1:
                pal = al
                pam = am
                par = ar
                pdl = dl
                pdm = dm
                pdr = dr
            am_p += o_h
            dy_p += o_h
            dx_p += SH * s_h
        # block rows below the last row of windows: at most 2 (NBH - OH <= ceil((KH - 1 - PH) / SH))
        if OH < NBH:
            _block_rows(dx_p, _wide(OH, BIG) * SH - PH, s_h, s_w, H, W, ix0, ok, pal, pdl, pam, pdm, par, pdr,
                        pal, pdl, pam, pdm, par, pdr, KH, KW, SH, SW, PW, DH, DW, NB, False, 1)
        if (KH - 1 - PH + SH - 1) // SH >= 2 and OH + 1 < NBH:  # no window reaches it: zeros
            _block_rows(dx_p + SH * s_h, _wide(OH + 1, BIG) * SH - PH, s_h, s_w, H, W, ix0, ok, pal, pdl, pam,
                        pdm, par, pdr, pal, pdl, pam, pdm, par, pdr, KH, KW, SH, SW, PW, 0, 0, NB, False, 1)

    @triton.jit
    def _pool_bwd_gather_kernel(
        dy_ptr, am_ptr, dx_ptr,  # as _pool_bwd_block_kernel's
        C, H, W, OH, OW,
        Q,  # lanes: N * C * W (NCHW) or N * W (channels_last, times the channels)
        D_M, D_S,  # q // W = umulhi(2q, D_M) >> D_S
        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
        PH: tl.constexpr, PW: tl.constexpr,
        CL: tl.constexpr, BIG: tl.constexpr, I64: tl.constexpr,
        BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
        EVEN_C: tl.constexpr,  # channels_last: C % BLOCK_C == 0
    ):
        """Any configuration: lane = (plane, input column iw), walking down the input rows; input (ih, iw)
        is in windows oh_last - a, ow_last - b (a < ceil(KH/SH), b < ceil(KW/SW)) where they exist and
        contain it."""
        NH: tl.constexpr = (KH + SH - 1) // SH
        NW: tl.constexpr = (KW + SW - 1) // SW
        if CL:
            pid_q, c, c_ok = _channel_tile(C, BLOCK_C, EVEN_C)
        else:
            pid_q = tl.program_id(0)
        lane_ok, plane, iw = _lanes(pid_q, Q, W, D_M, D_S, BLOCK_Q, BIG)
        iw = iw[:, None]
        if CL:
            s_w = C
        else:
            s_w = 1
        s_h = _wide(W * s_w, BIG)
        o_h = _wide(OW * s_w, BIG)
        ow_last = (iw + PW) // SW  # the last window column that can contain iw
        o_off = (_offset(plane, I64) * OH * o_h)[:, None]
        x_off = (_offset(plane, I64) * H * s_h)[:, None] + iw * s_w
        if CL:
            o_off = o_off + c[None, :]
            x_off = x_off + c[None, :]
            ok = lane_ok[:, None] & c_ok[None, :]
        else:
            ok = lane_ok[:, None]
        for ih in range(H):
            oh_last = (ih + PH) // SH
            g = _acc_zeros(x_off, dy_ptr)
            for a in range(NH):  # windows in row-major order: PyTorch's order of the sum
                oh = oh_last - (NH - 1) + a
                kh = ih + PH - oh * SH
                ok_h = (oh >= 0) & (oh < OH) & (kh < KH)
                o_row = _wide(tl.minimum(tl.maximum(oh, 0), OH - 1), BIG) * o_h
                for bb in range(NW):
                    ow = ow_last - (NW - 1) + bb
                    kw = iw + PW - ow * SW
                    m = ok & ok_h & (ow >= 0) & (ow < OW) & (kw < KW)
                    off = o_off + o_row + tl.minimum(tl.maximum(ow, 0), OW - 1) * s_w
                    am = tl.load(am_ptr + off, mask=m, other=-1).to(tl.int32)
                    hit = m & (am == kh * KW + kw)
                    g += _upcast(tl.load(dy_ptr + off, mask=hit, other=0.0))
            tl.store(dx_ptr + x_off + _wide(ih, BIG) * s_h, g.to(dx_ptr.dtype.element_ty), mask=ok)


# ------------------------------------------------------------------------------------ launchers

# Lanes per program and warps. NCHW: lanes are (plane, column) pairs, one per thread; channels_last:
# (image, column) pairs times a tile of channels, contiguous in memory (vector loads and stores).
_CONFIGS = {
    torch.contiguous_format: Config(dict(BLOCK_Q=128, BLOCK_C=1, EVEN_C=True), num_warps=4),
    torch.channels_last: Config(dict(BLOCK_Q=16, BLOCK_C=64), num_warps=4),
}
_UNROLL_MAX = 32  # windows of up to this many elements are unrolled (separable forward)
_FORCE_BIG = False  # tests: run the int64 code paths on small tensors
_FORCE_I64 = False

_INT32_LIMIT = 2**31 - 1


def _config(fmt, c, dtype):
    """NCHW: 128 lanes, one per thread. channels_last: channel tiles that divide C where one of 8 or more
    channels does (no channel masks: vector loads and stores) and 4 channels per thread (16 bytes in
    float32; 8 in 16-bit types, which keeps the backward's registers near 40-55); else one element per
    thread."""
    cfg = _CONFIGS[fmt]
    if fmt == torch.channels_last:
        block_c = cfg.constexprs["BLOCK_C"]
        while block_c > 8 and c % block_c:
            block_c //= 2
        if c % block_c:
            block_c = min(cfg.constexprs["BLOCK_C"], triton.next_power_of_2(c))
        vector = min(4, 16 // dtype.itemsize) if c % block_c == 0 and block_c >= 8 else 1
        block_q = max(1, 32 * cfg.num_warps * vector // block_c)
        cfg = Config(dict(BLOCK_Q=block_q, BLOCK_C=block_c, EVEN_C=c % block_c == 0), cfg.num_warps)
    return cfg


def _int64_flags(image: int, tensor: int, lanes: int) -> dict:
    """BIG: int64 offsets everywhere, when an image (or the lane count) reaches 2^31 elements; I64: int64
    offsets of the planes, when the tensor does. Below that, int32 offsets cannot wrap."""
    big = _FORCE_BIG or max(image, lanes) >= _INT32_LIMIT
    return dict(BIG=big, I64=big or _FORCE_I64 or tensor >= _INT32_LIMIT)


def _magic(d: int) -> tuple[int, int]:
    """(m, s) with q // d == umulhi(2q, m) >> s for 0 <= q < 2^31 (Granlund and Montgomery, "Division by
    invariant integers using multiplication", theorem 4.2 with N = 31: m = floor(2^(31+s) / d) + 1,
    s = ceil(log2 d); 2 <= m < 2^32, so the JIT never turns m into a constant)."""
    s = (d - 1).bit_length()
    return (1 << (31 + s)) // d + 1, s


def _grid(cfg, lanes, c, fmt):
    tiles = cdiv(lanes, cfg.constexprs["BLOCK_Q"])
    if fmt == torch.channels_last:
        tiles *= cdiv(c, cfg.constexprs["BLOCK_C"])
    return (tiles,)


def _pool_forward(x, kernel, stride, padding, relu=False, ceil_mode=False):
    """Returns (y, argmax)."""
    op = "relu_max_pool2d" if relu else "max_pool2d"
    fmt = memory_format(x)
    x = dense(x, fmt)
    n, c, h, w = x.shape
    y, am = pooled_outputs(x, kernel, stride, padding, relu=relu, ceil_mode=ceil_mode)  # as the fake one
    oh, ow = y.shape[2:]
    if y.numel() == 0:
        return y, am
    if not use_triton(x):
        pool_forward_torch(torch.relu(x) if relu else x, kernel, stride, padding, y, am)
        if relu:  # ReLU's backward passes no gradient where the pooled value is not positive
            am.masked_fill_(y <= 0, argmax_sentinel(am.dtype))
        return y, am
    cl = fmt == torch.channels_last
    cfg = _config(fmt, c, x.dtype)
    lanes = (n if cl else n * c) * ow
    unroll = kernel[0] * kernel[1] <= _UNROLL_MAX
    # offsets reach a window's extent past the image (padding, lanes clamped) beyond the elements
    slack = (kernel[0] + padding[0] + 1) * (w + kernel[1] + padding[1]) * c
    flags = _int64_flags(c * h * w + slack, n * c * h * w + slack, lanes + cfg.constexprs["BLOCK_Q"])
    mh, mw = window_masks((h, w), (oh, ow), kernel, stride, padding)
    launch(f"{op}_fwd", _pool_fwd_kernel, _grid(cfg, lanes, c, fmt),
           (x, y, am, c, h, w, oh, ow, lanes, *_magic(ow)), cfg, x.device,
           KH=kernel[0], KW=kernel[1], SH=stride[0], SW=stride[1], PH=padding[0], PW=padding[1], MH=mh, MW=mw,
           CL=cl, RELU=relu, UNROLL=unroll, CARRY=unroll and kernel[0] == stride[0] + 1, **flags)
    return y, am


def block_backward_fits(kernel, stride) -> bool:
    """The block-gather backward: kernel <= 2 * stride on both axes and blocks of at most 16 inputs."""
    return kernel[0] <= 2 * stride[0] and kernel[1] <= 2 * stride[1] and stride[0] * stride[1] <= 16


def _pool_backward(dy, am, input_hw, kernel, stride, padding, relu=False):
    op = "relu_max_pool2d" if relu else "max_pool2d"
    check_same_device(op, grad=dy, argmax=am)
    fmt = memory_format(am)
    am = dense(am, fmt)
    dy = dense(dy, fmt)
    n, c = dy.shape[:2]
    h, w = input_hw
    oh, ow = dy.shape[2:]
    dx = input_grad(dy, am, None, input_hw)
    if dx.numel() == 0:
        return dx
    if dy.numel() == 0:
        return dx.zero_()
    if not use_triton(dy):
        if relu:  # windows without a positive maximum send nothing
            none = am == argmax_sentinel(am.dtype)
            dy = dy.masked_fill(none, 0)
            am = am.masked_fill(none, 0)
        return dx.copy_(pool_backward_torch(dy, am, input_hw, kernel, stride, padding))
    cl = fmt == torch.channels_last
    cfg = _config(fmt, c, dy.dtype)
    planes = n if cl else n * c
    consts = dict(KH=kernel[0], KW=kernel[1], SH=stride[0], SW=stride[1], PH=padding[0], PW=padding[1], CL=cl)
    # (the sentinel of relu_max_pool2d matches no window position: the same kernels serve both ops)
    if block_backward_fits(kernel, stride):
        nbh = (h - 1 + padding[0]) // stride[0] + 1
        nbw = (w - 1 + padding[1]) // stride[1] + 1
        nb = 1 if cl else 2
        nl = cdiv(nbw, nb)
        lanes = planes * nl
        span = (nbh + 1) * stride[0] * (nl * nb + 1) * stride[1]  # what a plane's lanes may address
        flags = _int64_flags(c * span, n * c * span, lanes + cfg.constexprs["BLOCK_Q"])
        launch(f"{op}_bwd", _pool_bwd_block_kernel, _grid(cfg, lanes, c, fmt),
               (dy, am, dx, c, h, w, oh, ow, nbh, nl, lanes, *_magic(nl)), cfg, dy.device,
               NB=nb, MH=window_masks((h, w), (oh, ow), kernel, stride, padding)[0], **flags, **consts)
    else:
        lanes = planes * w
        flags = _int64_flags(c * (h + 1) * w, n * c * (h + 1) * w, lanes + cfg.constexprs["BLOCK_Q"])
        launch(f"{op}_bwd", _pool_bwd_gather_kernel, _grid(cfg, lanes, c, fmt),
               (dy, am, dx, c, h, w, oh, ow, lanes, *_magic(w)), cfg, dy.device, **flags, **consts)
    return dx


# ---------------------------------------------------------------------------------- registration


@torch.library.custom_op("alexnet_triton::max_pool2d", mutates_args=())
def max_pool2d_op(x: torch.Tensor, kernel_size: list[int], stride: list[int],
                  padding: list[int], ceil_mode: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    return _pool_forward(x, kernel_size, stride, padding, ceil_mode=ceil_mode)


@max_pool2d_op.register_fake
def _(x, kernel_size, stride, padding, ceil_mode=False):
    return pooled_outputs(x, kernel_size, stride, padding, ceil_mode=ceil_mode)


@torch.library.custom_op("alexnet_triton::max_pool2d_backward", mutates_args=())
def max_pool2d_backward_op(dy: torch.Tensor, argmax: torch.Tensor, input_hw: list[int],
                           kernel_size: list[int], stride: list[int], padding: list[int]) -> torch.Tensor:
    return _pool_backward(dy, argmax, input_hw, kernel_size, stride, padding)


@max_pool2d_backward_op.register_fake
def _(dy, argmax, input_hw, kernel_size, stride, padding):
    return input_grad(dy, argmax, None, input_hw)


def _pool_setup_context(ctx, inputs, output):
    x, kernel_size, stride, padding = inputs[:4]  # (ceil_mode: the backward reads it from dy's size)
    ctx.save_for_backward(output[1])  # the argmax bytes only: backward needs no input values
    ctx.args = (list(x.shape[2:]), kernel_size, stride, padding)


def _pool_backward_fn(ctx, dy, _d_argmax):
    (argmax,) = ctx.saved_tensors
    return _max_pool2d_bwd(dy, argmax, *ctx.args), None, None, None, None


def _max_pool2d_impl(x, kernel_size, stride, padding, ceil_mode=False):
    return _pool_forward(x, kernel_size, stride, padding, ceil_mode=ceil_mode)


def _max_pool2d_backward_impl(dy, argmax, input_hw, kernel_size, stride, padding):
    return _pool_backward(dy, argmax, input_hw, kernel_size, stride, padding)


max_pool2d_op.register_autograd(_pool_backward_fn, setup_context=_pool_setup_context)
_max_pool2d_bwd = fast_path(max_pool2d_backward_op, _max_pool2d_backward_impl)
_max_pool2d = fast_path(max_pool2d_op, eager_autograd("MaxPool2d", _max_pool2d_impl, _pool_setup_context,
                                                      _pool_backward_fn).apply)


@torch.library.custom_op("alexnet_triton::relu_max_pool2d", mutates_args=())
def relu_max_pool2d_op(x: torch.Tensor, kernel_size: list[int], stride: list[int],
                       padding: list[int], ceil_mode: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    return _pool_forward(x, kernel_size, stride, padding, relu=True, ceil_mode=ceil_mode)


@relu_max_pool2d_op.register_fake
def _(x, kernel_size, stride, padding, ceil_mode=False):
    return pooled_outputs(x, kernel_size, stride, padding, relu=True, ceil_mode=ceil_mode)


@torch.library.custom_op("alexnet_triton::relu_max_pool2d_backward", mutates_args=())
def relu_max_pool2d_backward_op(dy: torch.Tensor, argmax: torch.Tensor, input_hw: list[int],
                                kernel_size: list[int], stride: list[int],
                                padding: list[int]) -> torch.Tensor:
    return _pool_backward(dy, argmax, input_hw, kernel_size, stride, padding, relu=True)


@relu_max_pool2d_backward_op.register_fake
def _(dy, argmax, input_hw, kernel_size, stride, padding):
    return input_grad(dy, argmax, None, input_hw)


def _relu_pool_backward_fn(ctx, dy, _d_argmax):
    (argmax,) = ctx.saved_tensors
    return _relu_max_pool2d_bwd(dy, argmax, *ctx.args), None, None, None, None


def _relu_max_pool2d_impl(x, kernel_size, stride, padding, ceil_mode=False):
    return _pool_forward(x, kernel_size, stride, padding, relu=True, ceil_mode=ceil_mode)


def _relu_max_pool2d_backward_impl(dy, argmax, input_hw, kernel_size, stride, padding):
    return _pool_backward(dy, argmax, input_hw, kernel_size, stride, padding, relu=True)


relu_max_pool2d_op.register_autograd(_relu_pool_backward_fn, setup_context=_pool_setup_context)
_relu_max_pool2d_bwd = fast_path(relu_max_pool2d_backward_op, _relu_max_pool2d_backward_impl)
_relu_max_pool2d = fast_path(relu_max_pool2d_op, eager_autograd("ReLUMaxPool2d", _relu_max_pool2d_impl,
                                                                _pool_setup_context,
                                                                _relu_pool_backward_fn).apply)


# ----------------------------------------------------------------------------------------- public


def _pool(op_name: str, op, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    check_tensor(op_name, x)
    if x.dim() not in (3, 4):
        raise ValueError(f"{op_name}: expected a 3-D (C, H, W) or 4-D (N, C, H, W) tensor, got {x.dim()}-D "
                         f"with shape {tuple(x.shape)}")
    x4 = x.unsqueeze(0) if x.dim() == 3 else x  # (C, H, W): a batch of one, as F.max_pool2d
    kernel, stride, padding, _ = check_pool_args(op_name, x4, kernel_size, stride, padding, dilation,
                                                 bool(ceil_mode), return_indices)
    y = op(x4, list(kernel), list(stride), list(padding), bool(ceil_mode))[0]
    return y.squeeze(0) if x.dim() == 3 else y


def max_pool2d(x: torch.Tensor, kernel_size=3, stride=2, padding=0, dilation=1, ceil_mode=False,
               return_indices=False) -> torch.Tensor:
    """``F.max_pool2d(x, kernel_size, stride, padding, ceil_mode=ceil_mode)`` on (N, C, H, W) or (C, H, W)
    input; saves one byte per output for backward.

    ``stride=None`` means ``kernel_size``, as in PyTorch. ``dilation`` other than 1 and
    ``return_indices=True`` raise a ValueError that names ``F.max_pool2d`` as the alternative."""
    return _pool("max_pool2d", _max_pool2d, x, kernel_size, stride, padding, dilation, ceil_mode,
                 return_indices)


def relu_max_pool2d(x: torch.Tensor, kernel_size=3, stride=2, padding=0, dilation=1, ceil_mode=False,
                    return_indices=False) -> torch.Tensor:
    """``F.max_pool2d(F.relu(x), kernel_size, stride, padding, ceil_mode=ceil_mode)`` in one kernel each
    way, on (N, C, H, W) or (C, H, W) input; saves one byte per output for backward (the window's argmax,
    or a sentinel where its maximum is not positive).

    ``stride=None`` means ``kernel_size``, as in PyTorch; ``dilation`` and ``return_indices`` as in
    ``max_pool2d``."""
    return _pool("relu_max_pool2d", _relu_max_pool2d, x, kernel_size, stride, padding, dilation, ceil_mode,
                 return_indices)
