"""ReLU + LRN + max-pool, fused: ``relu_lrn_max_pool2d`` (AlexNet's block after conv1 and conv2).

Defined as exactly ``max_pool2d(relu_lrn(x))`` computed from the op's own ``relu_lrn`` values: the
pooled output equals ``kernels.max_pool2d(kernels.relu_lrn(x))`` bit for bit, and the argmax is the
argmax of those values (ties go to the first maximum in row-major window order, the last NaN wins).
Saves x and one byte per pooled output; the LRN output is recomputed in backward, never stored.
"""

from __future__ import annotations

import functools

import torch

from ._common import (
    Config,
    cdiv,
    check_lrn_args,
    check_same_device,
    check_tensor,
    dense,
    eager_autograd,
    fast_path,
    inline_ptx,
    launch,
    memory_format,
    pool_args,
    tl,
    triton,
    use_triton,
)
from ._pooling import block_windows, input_grad, pool_backward_torch, pool_forward_torch, pooled_outputs
from .lrn import _lrn_window, lrn_backward_torch, lrn_forward_torch, needs_int64, strides, tiny_s

# ------------------------------------------------------------------------------------- kernels

if triton is not None:
    from ._jit import (
        _acc_zeros,
        _gather_pool_grad,
        _ld,
        _ld_idx,
        _lrn_dx,
        _lrn_dx_sum,
        _lrn_ta,
        _lrn_ta_s,
        _lrn_y,
        _offset,
        _put,
        _relu,
        _relu_up,
        _ring_sumsq,
        _rounded,
        _shift,
        _st,
        _st_if,
        _tile_ids,
        _upcast,
        _window_sumsq,
    )

    # ---------------------------------------------- NCHW forward: patches walking the channels
    # A thread owns a patch of TOH x TOW pooled outputs of one image and the U x V input pixels under
    # them, and walks a chunk of channels keeping the last SIZE relu'd values per pixel in registers
    # (lrn.py's walk): each LRN value is computed once per patch, then pooled in the patch. For
    # AlexNet's 3x3 / 2 pools a 2 x 2 patch reads 5 x 5 pixels: 6.25 LRN values per output, where the
    # plane's minimum is about 4.2. Only for windows that lie inside the plane (no padding, no window
    # past the edge): the patches of a row's or column's end overlap their neighbours instead of running
    # past the plane, so no load needs a mask and a patch's offsets are one pointer plus constants
    # (row pointers + immediate column offsets). Chunks are L channels, a multiple of SIZE; the last
    # chunk ends at C - HI (overlapping its neighbour: the same values stored twice) and then finishes
    # the last HI channels without loads (zeros past C, PyTorch's padding). Only the prologue, the
    # first SIZE - 1 loads of a chunk, tests a channel bound.
    # The steps' groups: plane = (H * W, OH * OW, W, OW); ptrs = (x at the first pixel of each of the
    # patch's U rows, y and am at its first output); lrn = (alpha / size, k); zeros = (float and int zeros,
    # one per thread).
    @triton.jit
    def _patch_steps(
        R, c_first, plane, ptrs, lrn, zeros, N_STEPS: tl.constexpr, LOAD: tl.constexpr, SIZE: tl.constexpr,
        BETA: tl.constexpr, TINY: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr,
        SW: tl.constexpr, TOH: tl.constexpr, TOW: tl.constexpr, BIG: tl.constexpr,
    ):
        """N_STEPS steps from channel c_first: load channel c + HI (LOAD; else shift in zeros), compute
        channel c's LRN at the patch's pixels, pool it and store the patch's outputs."""
        LO: tl.constexpr = SIZE // 2
        HI: tl.constexpr = SIZE - 1 - LO
        U: tl.constexpr = (TOH - 1) * SH + KH
        V: tl.constexpr = (TOW - 1) * SW + KW
        HW, OHW, W, OW = plane
        x_rows, y_pix, am_pix = ptrs
        alpha_n, k = lrn
        zero, zero_i = zeros
        for j in tl.static_range(N_STEPS):
            c = c_first + j
            for u in tl.static_range(U):
                if LOAD:
                    row = x_rows[u] + _offset(c + HI, BIG) * HW
                for v in tl.static_range(V):
                    if LOAD:
                        val = _relu_up(_ld(row + v))
                    else:
                        val = zero
                    R = _put(R, u * V + v, _shift(R[u * V + v], val))
            ys = ()
            for p in tl.static_range(U * V):
                ys = ys + (_lrn_y(R[p][LO], _ring_sumsq(R[p], SIZE), alpha_n, k, BETA, TINY),)
            # rounded to the output dtype, as relu_lrn's output is, before they compete (in pairs: one
            # packed conversion for two)
            vals = ()
            for p in tl.static_range(0, U * V - 1, 2):
                vals = vals + _rounded(ys[p], ys[p + 1], y_pix)
            if (U * V) % 2:
                vals = vals + (_upcast(ys[U * V - 1].to(y_pix.dtype.element_ty)),)
            # pooled separably: PyTorch's rule (the first in-bounds position starts, a value wins when
            # v > best or v is NaN) along each row, then down the rows' winners: the first maximum in
            # row-major order wins, or the last NaN, as in one pass over the window
            rows = ()
            for u in tl.static_range(U):
                for b in tl.static_range(TOW):
                    best = vals[u * V + b * SW]
                    arg = zero_i
                    for kw in tl.static_range(1, KW):
                        v = vals[u * V + b * SW + kw]
                        take = (v > best) | (v != v)
                        best = tl.where(take, v, best)
                        arg = tl.where(take, kw, arg)
                    rows = rows + ((best, arg),)
            cc = _offset(c, BIG) * OHW
            for a in tl.static_range(TOH):
                for b in tl.static_range(TOW):
                    best, arg = rows[(a * SH) * TOW + b]
                    for kh in tl.static_range(1, KH):
                        v, kw_v = rows[(a * SH + kh) * TOW + b]
                        take = (v > best) | (v != v)
                        best = tl.where(take, v, best)
                        arg = tl.where(take, kw_v + kh * KW, arg)
                    _st(y_pix + cc + a * OW + b, best.to(y_pix.dtype.element_ty))
                    _st(am_pix + cc + a * OW + b, arg.to(am_pix.dtype.element_ty))
        return R

    @triton.jit
    def _patch_fwd_kernel(
        x_ptr,  # *T (N, C, H, W) input, NCHW dense
        y_ptr,  # *T (N, C, OH, OW) pooled output, NCHW dense
        am_ptr,  # *u8|i32 (N, C, OH, OW) argmax inside the window, kh * KW + kw
        C, H, W, OH, OW,
        n_cb, n_q, n_pc,  # channel chunks, patches in all images, patch columns per plane
        L, LL, alpha_n, k,  # channels per chunk and in the last chunk (multiples of SIZE), alpha / size, k
        SIZE: tl.constexpr, BETA: tl.constexpr, TINY: tl.constexpr,
        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
        TOH: tl.constexpr, TOW: tl.constexpr,  # pooled outputs per thread
        BLOCK: tl.constexpr, BIG: tl.constexpr,  # patches (threads) per program; int64 channel offsets
    ):
        LO: tl.constexpr = SIZE // 2
        HI: tl.constexpr = SIZE - 1 - LO
        U: tl.constexpr = (TOH - 1) * SH + KH
        V: tl.constexpr = (TOW - 1) * SW + KW
        pid = tl.program_id(0)
        t = pid // n_cb
        cb = pid - t * n_cb  # chunks vary fastest: neighbours share their halo channels in L2
        # patches of all images in one flat range (the last program's surplus threads redo the last patch)
        q = tl.minimum(t * BLOCK + tl.arange(0, BLOCK), n_q - 1)
        n_pr = tl.cdiv(OH, TOH)
        n = q // (n_pr * n_pc)
        pq = q - n * (n_pr * n_pc)
        pr = pq // n_pc
        pc = pq - pr * n_pc
        oh0 = tl.minimum(pr * TOH, OH - TOH)  # a row's or column's last patch overlaps its neighbour
        ow0 = tl.minimum(pc * TOW, OW - TOW)
        HW = H * W
        OHW = OH * OW
        x_pix = x_ptr + (n.to(tl.int64) * C * HW + (oh0 * SH * W + ow0 * SW))
        # the patch's U rows, set once: a channel step adds one offset to each (an IMAD.WIDE a row)
        x_rows = ()
        for u in tl.static_range(U):
            x_rows = x_rows + (x_pix + u * W,)
        o_off = n.to(tl.int64) * C * OHW + (oh0 * OW + ow0)
        y_pix = y_ptr + o_off
        am_pix = am_ptr + o_off
        zero = _acc_zeros(q, x_ptr)
        zero_i = tl.zeros_like(q)
        R = ((zero,) * SIZE,) * (U * V)  # R[p]: relu'd x of the last SIZE channels at pixel p, oldest first

        # chunk cb walks channels [c0, c0 + ln); the last one ends at C - HI, LL channels long (a multiple of
        # SIZE: it overlaps its neighbour by fewer than SIZE channels, stored twice with the same values)
        last = cb == n_cb - 1
        ln = tl.where(last, LL, L)
        c0 = tl.where(last, C - HI - LL, cb * L)
        # prologue: channels c0 - LO .. c0 + HI - 1 (below 0: PyTorch's zero padding)
        for j in tl.static_range(SIZE - 1):
            i = c0 - LO + j
            for u in tl.static_range(U):
                row = x_rows[u] + _offset(tl.maximum(i, 0), BIG) * HW
                for v in tl.static_range(V):
                    val = tl.where(i >= 0, _relu_up(_ld(row + v)), 0.0)
                    R = _put(R, u * V + v, _shift(R[u * V + v], val))
        args = ((HW, OHW, W, OW), (x_rows, y_pix, am_pix), (alpha_n, k), (zero, zero_i))
        for g in range(0, ln // SIZE):
            R = _patch_steps(R, c0 + g * SIZE, *args, N_STEPS=SIZE, LOAD=True, SIZE=SIZE, BETA=BETA,
                             TINY=TINY, KH=KH, KW=KW, SH=SH, SW=SW, TOH=TOH, TOW=TOW, BIG=BIG)
        if last:  # channels C - HI .. C - 1, whose windows run past C: no loads
            R = _patch_steps(R, C - HI, *args, N_STEPS=HI, LOAD=False, SIZE=SIZE, BETA=BETA, TINY=TINY, KH=KH,
                             KW=KW, SH=SH, SW=SW, TOH=TOH, TOW=TOW, BIG=BIG)

    @triton.jit
    def _pool_fwd_kernel(
        x_ptr,  # *T (N, C, H, W) input
        y_ptr,  # *T (N, C, OH, OW) pooled output
        am_ptr,  # *u8|i32 (N, C, OH, OW) argmax inside the window, kh * KW + kw; same strides as y
        C, H, W, OW, P,  # channels, input height and width, output width, OH * OW
        s_n, s_c, s_h, s_w,  # strides of x in elements
        o_n, o_c, o_h, o_w,  # strides of y and am in elements
        KH, KW, SH, SW, PH, PW,  # kernel, stride, padding
        size, lo, alpha_n, k,  # LRN window, channels before c, alpha / size, constant
        BETA: tl.constexpr, TINY: tl.constexpr,  # LRN exponent
        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BIG: tl.constexpr,  # tile; int64 offsets in an image
    ):
        pid_c, pid_p, n = _tile_ids(C, BLOCK_C, P, BLOCK_P)
        c = (pid_c * BLOCK_C + tl.arange(0, BLOCK_C))[:, None]  # (BLOCK_C, 1)
        p = (pid_p * BLOCK_P + tl.arange(0, BLOCK_P))[None, :]  # (1, BLOCK_P) flat output position
        valid = (c < C) & (p < P)
        oh = p // OW
        ow = p % OW
        h0 = oh * SH - PH  # window origin, may be negative inside the padding
        w0 = ow * SW - PW
        x_base = n.to(tl.int64) * s_n
        c_off = _offset(c, BIG) * s_c

        best = _acc_zeros(valid, y_ptr) - float("inf")
        arg = (tl.maximum(-h0, 0) * KW + tl.maximum(-w0, 0)) + tl.zeros([BLOCK_C, BLOCK_P], tl.int32)
        for kh in range(KH):
            ih = h0 + kh
            for kw in range(KW):
                iw = w0 + kw
                inb = valid & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                sp_off = _offset(ih, BIG) * s_h + _offset(iw, BIG) * s_w
                v = _upcast(tl.load(x_ptr + x_base + c_off + sp_off, mask=inb, other=float("-inf")))
                # (the window's centre is loaded again above: reusing it spills on sm_80 in float64)
                sumsq, _ = _window_sumsq(x_ptr, x_base, sp_off, c, C, inb, s_c, size, lo, BIG)
                # round to the output dtype before comparing, as the unfused ops would
                v = _upcast(_lrn_y(_relu(v), sumsq, alpha_n, k, BETA, TINY).to(y_ptr.dtype.element_ty))
                take = inb & ((v > best) | (v != v))
                best = tl.where(take, v, best)
                arg = tl.where(take, kh * KW + kw, arg)

        o_off = n.to(tl.int64) * o_n + (_offset(c, BIG) * o_c + _offset(oh, BIG) * o_h
                                        + _offset(ow, BIG) * o_w)
        tl.store(y_ptr + o_off, best.to(y_ptr.dtype.element_ty), mask=valid)
        tl.store(am_ptr + o_off, arg.to(am_ptr.dtype.element_ty), mask=valid)

    # ---------------------------------------------- NCHW backward: pixel blocks walking the channels
    # A thread owns an SH x SW block of input pixels of one image (and reads the NWH x NWW windows that
    # can hold them: a pixel's position inside each window is a constant, block_windows) and walks a
    # chunk of channels with three rings per pixel: r = relu(x), t and a (lrn.py's derivation above
    # _lrn_bwd_walk_kernel). Step "load i": load x_i, finish t and a of channel j = i - HI (its pooled
    # gradient routed through the argmax of the windows), finish dx of channel c = i - SIZE + 1. A chunk
    # of main channels [c0, c0 + ln) (a multiple of SIZE; the last chunk ends at C - SIZE + 1, overlapping
    # its neighbour) needs a prologue of SIZE - 1 load-only steps and SIZE - 1 steps without dx (the
    # halo); the last chunk finishes channels C - SIZE + 1 .. C - 1 without loads. Only the prologue
    # tests channel bounds; only a block at the plane's far edge has pixels or windows outside it
    # (clamped, their windows' gradients zeroed, their stores skipped).
    # The steps' groups: planes = (H * W, OH * OW); pix = (x and dx at the image's start, the block's
    # pixel offsets and which lie in the plane); wins = (dy and am at the windows, which lie in the plane);
    # lrn = (alpha / size, k, 2 (alpha / size) beta). Flags: LOAD channel i (else zeros), GATHER t and a
    # of channel j, store DX of channel c, CHECK channel bounds (the prologue).
    @triton.jit
    def _blk_bwd_steps(
        R, T, A, i_first, planes, pix, wins, lrn, zero, N_STEPS: tl.constexpr, LOAD: tl.constexpr,
        GATHER: tl.constexpr, DX: tl.constexpr, CHECK: tl.constexpr, SIZE: tl.constexpr, BETA: tl.constexpr,
        TINY: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
        OH_LO: tl.constexpr, NWH: tl.constexpr, OW_LO: tl.constexpr, NWW: tl.constexpr, BIG: tl.constexpr,
    ):
        LO: tl.constexpr = SIZE // 2
        HI: tl.constexpr = SIZE - 1 - LO
        NPIX: tl.constexpr = SH * SW
        HW, OHW = planes
        x_pix, dx_pix, offs, px_ok = pix
        dy_w, am_w, w_ok = wins
        alpha_n, k, coef = lrn
        for jj in tl.static_range(N_STEPS):
            i = i_first + jj  # the channel loaded now
            j = i - HI  # its t and a are complete now
            c = i - (SIZE - 1)  # its dx is complete now
            if LOAD:
                if CHECK:
                    x_i = x_pix + _offset(tl.maximum(i, 0), BIG) * HW
                else:
                    x_i = x_pix + _offset(i, BIG) * HW
            if GATHER:
                if CHECK:
                    o_j = _offset(tl.maximum(j, 0), BIG) * OHW
                else:
                    o_j = _offset(j, BIG) * OHW
                # the pooled gradient reaching each pixel, summed in the windows' row-major order
                gs = (zero,) * NPIX
                for a in tl.static_range(NWH):
                    for b in tl.static_range(NWW):
                        am = _ld_idx(am_w[a * NWW + b] + o_j)
                        d = tl.where(w_ok[a * NWW + b], _upcast(_ld(dy_w[a * NWW + b] + o_j)), 0.0)
                        for u in tl.static_range(SH):
                            for v in tl.static_range(SW):
                                kh = u - (OH_LO + a) * SH  # the pixel's place in the window: a constant
                                kw = v - (OW_LO + b) * SW
                                if kh >= 0 and kh < KH and kw >= 0 and kw < KW:
                                    hit = am == kh * KW + kw
                                    gs = _put(gs, u * SW + v, gs[u * SW + v] + tl.where(hit, d, 0.0))
            for p in tl.static_range(NPIX):
                if LOAD:
                    r = _relu_up(_ld(x_i + offs[p]))
                    if CHECK:
                        r = tl.where(i >= 0, r, 0.0)
                else:
                    r = zero
                Rp = _shift(R[p], r)
                if GATHER:
                    t_j, a_j = _lrn_ta(Rp, gs[p], alpha_n, k, SIZE, BETA, TINY)
                    if CHECK:  # channels below 0 have no t or a
                        t_j = tl.where(j >= 0, t_j, 0.0)
                        a_j = tl.where(j >= 0, a_j, 0.0)
                else:
                    t_j = zero
                    a_j = zero
                Tp = _shift(T[p], t_j)
                Ap = _shift(A[p], a_j)
                if DX:
                    dx = _lrn_dx(Rp[0], Ap[HI], Tp, coef, SIZE)
                    _st_if(dx_pix + _offset(c, BIG) * HW + offs[p], dx.to(dx_pix.dtype.element_ty), px_ok[p])
                R = _put(R, p, Rp)
                T = _put(T, p, Tp)
                A = _put(A, p, Ap)
        return R, T, A

    @triton.jit
    def _patch_bwd_kernel(
        x_ptr,  # *T (N, C, H, W) the forward's input, NCHW dense
        dy_ptr,  # *T (N, C, OH, OW) gradient of the pooled output, NCHW dense
        am_ptr,  # *u8|i32 (N, C, OH, OW) the forward's argmax
        dx_ptr,  # *T (N, C, H, W) gradient of the input, NCHW dense
        C, H, W, OH, OW,
        n_cb, n_q, n_bc,  # channel chunks, pixel blocks in all images, block columns per plane
        L, LL, alpha_n, k,  # main channels per chunk and in the last chunk (multiples of SIZE); alpha / size
        SIZE: tl.constexpr, BETA: tl.constexpr, TINY: tl.constexpr,
        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
        OH_LO: tl.constexpr, NWH: tl.constexpr, OW_LO: tl.constexpr, NWW: tl.constexpr,
        BLOCK: tl.constexpr, BIG: tl.constexpr,
    ):
        LO: tl.constexpr = SIZE // 2
        HI: tl.constexpr = SIZE - 1 - LO
        pid = tl.program_id(0)
        t = pid // n_cb
        cb = pid - t * n_cb
        q = tl.minimum(t * BLOCK + tl.arange(0, BLOCK), n_q - 1)  # surplus threads redo the last block
        n_br = tl.cdiv(H, SH)
        n = q // (n_br * n_bc)
        pq = q - n * (n_br * n_bc)
        bh = pq // n_bc
        bw = pq - bh * n_bc
        HW = H * W
        OHW = OH * OW
        offs = ()
        px_ok = ()
        for u in tl.static_range(SH):
            for v in tl.static_range(SW):
                ih = bh * SH + u
                iw = bw * SW + v
                px_ok = px_ok + ((ih < H) & (iw < W),)
                offs = offs + (tl.minimum(ih, H - 1) * W + tl.minimum(iw, W - 1),)  # clamped into the plane
        dy_w = ()
        am_w = ()
        w_ok = ()
        o_img = n.to(tl.int64) * C * OHW
        for a in tl.static_range(NWH):
            for b in tl.static_range(NWW):
                oh = bh + (OH_LO + a)
                ow = bw + (OW_LO + b)
                w_ok = w_ok + ((oh >= 0) & (oh < OH) & (ow >= 0) & (ow < OW),)
                o = o_img + (tl.minimum(tl.maximum(oh, 0), OH - 1) * OW
                             + tl.minimum(tl.maximum(ow, 0), OW - 1))
                dy_w = dy_w + (dy_ptr + o,)
                am_w = am_w + (am_ptr + o,)
        x_pix = x_ptr + n.to(tl.int64) * C * HW
        dx_pix = dx_ptr + n.to(tl.int64) * C * HW
        zero = _acc_zeros(q, x_ptr)
        R = ((zero,) * SIZE,) * (SH * SW)
        T = R
        A = R
        coef = (zero + alpha_n) * (2.0 * BETA)

        walked = C - (SIZE - 1)  # channels whose loads all lie below C
        last = cb == n_cb - 1
        ln = tl.where(last, LL, L)
        c0 = tl.where(last, walked - LL, cb * L)
        args = ((HW, OHW), (x_pix, dx_pix, offs, px_ok), (dy_w, am_w, w_ok), (alpha_n, k, coef), zero)
        # prologue: load channels c0 - SIZE + 1 .. c0 - 1, then c0 .. c0 + SIZE - 2 with their t and a
        R, T, A = _blk_bwd_steps(R, T, A, c0 - (SIZE - 1), *args, N_STEPS=SIZE - 1, LOAD=True, GATHER=False,
                                 DX=False, CHECK=True, SIZE=SIZE, BETA=BETA, TINY=TINY, KH=KH, KW=KW, SH=SH,
                                 SW=SW, OH_LO=OH_LO, NWH=NWH, OW_LO=OW_LO, NWW=NWW, BIG=BIG)
        R, T, A = _blk_bwd_steps(R, T, A, c0, *args, N_STEPS=SIZE - 1, LOAD=True, GATHER=True, DX=False,
                                 CHECK=True, SIZE=SIZE, BETA=BETA, TINY=TINY, KH=KH, KW=KW, SH=SH, SW=SW,
                                 OH_LO=OH_LO, NWH=NWH, OW_LO=OW_LO, NWW=NWW, BIG=BIG)
        for g in range(0, ln // SIZE):
            i_g = c0 + (SIZE - 1) + g * SIZE
            R, T, A = _blk_bwd_steps(R, T, A, i_g, *args, N_STEPS=SIZE, LOAD=True, GATHER=True, DX=True,
                                     CHECK=False, SIZE=SIZE, BETA=BETA, TINY=TINY, KH=KH, KW=KW, SH=SH, SW=SW,
                                     OH_LO=OH_LO, NWH=NWH, OW_LO=OW_LO, NWW=NWW, BIG=BIG)
        # the last chunk: dx of channels C - SIZE + 1 .. C - 1 (loads past C are zeros; so are t and a of
        # channels from C on)
        if last:
            R, T, A = _blk_bwd_steps(R, T, A, C, *args, N_STEPS=HI, LOAD=False, GATHER=True, DX=True,
                                     CHECK=False, SIZE=SIZE, BETA=BETA, TINY=TINY, KH=KH, KW=KW, SH=SH, SW=SW,
                                     OH_LO=OH_LO, NWH=NWH, OW_LO=OW_LO, NWW=NWW, BIG=BIG)
            R, T, A = _blk_bwd_steps(R, T, A, C + HI, *args, N_STEPS=LO, LOAD=False, GATHER=False, DX=True,
                                     CHECK=False, SIZE=SIZE, BETA=BETA, TINY=TINY, KH=KH, KW=KW, SH=SH, SW=SW,
                                     OH_LO=OH_LO, NWH=NWH, OW_LO=OW_LO, NWW=NWW, BIG=BIG)

    # Fused backward. g = gradient of the LRN output (gathered from the pooled gradient), then, with
    # t_c = g_c * r_c * s_c^(-beta-1) (see lrn.py):
    #   dx_c = [x_c > 0] * (g_c * s_c^-beta - 2 * (alpha/size) * beta * r_c * sum_{c' in [c-hi, c+lo]} t_c')
    @triton.jit
    def _pool_bwd_kernel(
        x_ptr,  # *T (N, C, H, W) the forward's input
        dy_ptr,  # *T (N, C, OH, OW) gradient of the pooled output
        am_ptr,  # *u8|i32 (N, C, OH, OW) argmax from the forward, same strides as dy
        dx_ptr,  # *T (N, C, H, W) gradient of the input, same strides as x
        C, H, W, OH, OW,  # channels, input height and width, output height and width
        s_n, s_c, s_h, s_w,  # strides of x and dx in elements
        o_n, o_c, o_h, o_w,  # strides of dy and am in elements
        KH, KW, SH, SW, PH, PW,  # kernel, stride, padding
        size, lo, alpha_n, k,  # LRN window, channels before c, alpha / size, constant
        BETA: tl.constexpr, TINY: tl.constexpr,  # LRN exponent
        BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BIG: tl.constexpr,  # tile; int64 offsets in an image
    ):
        pid_c, pid_hw, n = _tile_ids(C, BLOCK_C, H * W, BLOCK_HW)
        c = (pid_c * BLOCK_C + tl.arange(0, BLOCK_C))[:, None]
        hw = (pid_hw * BLOCK_HW + tl.arange(0, BLOCK_HW))[None, :]
        valid = (c < C) & (hw < H * W)
        ih = hw // W
        iw = hw % W
        x_base = n.to(tl.int64) * s_n
        o_base = n.to(tl.int64) * o_n
        sp_off = _offset(ih, BIG) * s_h + _offset(iw, BIG) * s_w
        offs = x_base + (_offset(c, BIG) * s_c + sp_off)
        hi = size - 1 - lo
        t_sum = _acc_zeros(valid, x_ptr)
        a_self = t_sum
        for d in range(size):  # c' = c + d - hi runs over [c - hi, c + lo]
            cp = c + (d - hi)
            m = valid & (cp >= 0) & (cp < C)
            sumsq, r_cp = _window_sumsq(x_ptr, x_base, sp_off, cp, C, m, s_c, size, lo, BIG)
            g_cp = _gather_pool_grad(dy_ptr, am_ptr, o_base, cp, ih, iw, m, (OH, OW), (o_c, o_h, o_w),
                                     (KH, KW, SH, SW, PH, PW), BIG)
            t_cp, a_cp = _lrn_ta_s(sumsq, r_cp, g_cp, alpha_n, k, BETA, TINY)
            t_sum += tl.where(m, t_cp, 0.0)
            a_self = tl.where(d == hi, a_cp, a_self)
        x = _upcast(tl.load(x_ptr + offs, mask=valid, other=0.0))
        dx = _lrn_dx_sum(_relu(x), a_self, t_sum, (_acc_zeros(valid, x_ptr) + alpha_n) * (2.0 * BETA))
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=valid)



# ------------------------------------------------------------------------------------ launchers

# The tile kernels' configurations: four outputs (forward) or inputs (backward) a thread. Left to choose,
# ptxas keeps them at 56-64 registers on some targets and spills 8-40 bytes (a value kept across the loop
# nest, with one or two elements a thread also on sm_75-sm_90a); capped (.maxnreg, NVIDIA's only) it takes
# 72-120 and spills nothing in any dtype, window or SIZE up to 17.
_FWD_CONFIGS = {
    torch.contiguous_format: Config(dict(BLOCK_C=8, BLOCK_P=64), num_warps=4, max_registers=128),
    torch.channels_last: Config(dict(BLOCK_C=16, BLOCK_P=16), num_warps=2, max_registers=128),
}
_BWD_CONFIGS = {
    torch.contiguous_format: Config(dict(BLOCK_C=8, BLOCK_HW=64), num_warps=4, max_registers=128),
    torch.channels_last: Config(dict(BLOCK_C=16, BLOCK_HW=16), num_warps=4, max_registers=128),
}


_PATCH_BUDGET = 125  # ring registers a thread may hold: SIZE per input pixel under its patch
_PATCH_MIN_CHANNELS = 20  # a chunk's channels, at least (each chunk reloads SIZE - 1 halo channels)
_PATCH_MAX_CHANNELS = 40  # and at most (enough programs to fill a GPU at AlexNet's sizes)
_PATCH_MAX_CHANNELS_BWD = 100


def _patch_shape(size, pool, h, w, oh, ow, c, dtype):
    """(TOH, TOW): pooled outputs per thread of the patch forward, or None where it doesn't apply:
    padding, a window past the plane (ceil_mode), fewer than SIZE + HI channels, float64, or no patch
    whose ring fits the register budget."""
    (kh, kw), (sh, sw), (ph, pw) = pool
    if dtype == torch.float64 or size > 16 or ph or pw or c < size + (size - 1 - size // 2):
        return None
    if (oh - 1) * sh + kh > h or (ow - 1) * sw + kw > w:
        return None
    for toh, tow in ((2, 2), (1, 2), (1, 1)):
        if toh <= oh and tow <= ow and ((toh - 1) * sh + kh) * ((tow - 1) * sw + kw) * size <= _PATCH_BUDGET:
            return toh, tow
    return None


def _patch_chunks(c: int, size: int, halo: int, setup: float,
                  most: int = _PATCH_MAX_CHANNELS) -> tuple[int, int]:
    """(L, LL): channels per chunk of a patch walk, and in the last chunk, multiples of SIZE (the walk is
    unrolled by SIZE) covering the C - halo walked channels: the last chunk is the shortest multiple that
    reaches C - halo, overlapping its neighbour by less than SIZE. L (20 to ``most`` channels) minimises
    the steps in all, counting each chunk's setup and prologue as ``setup`` steps."""
    walked = c - halo
    best = None
    for m in range(1, walked // size + 1):
        chunk = m * size
        longest = (m + 1) * size > walked
        if chunk > max(most, size) or (chunk < _PATCH_MIN_CHANNELS and not longest):
            continue
        n_cb = cdiv(walked, chunk)
        last = size * cdiv(walked - (n_cb - 1) * chunk, size)
        cost = (n_cb - 1) * chunk + last + setup * n_cb
        if best is None or cost < best[0]:
            best = (cost, chunk, last)
    return best[1], best[2]


@functools.lru_cache(maxsize=256)
def _patch_plan(n, c, h, w, oh, ow, dtype, pool, size, beta, big):
    toh, tow = _patch_shape(size, pool, h, w, oh, ow, c, dtype)
    hi = size - 1 - size // 2
    chunk, last = _patch_chunks(c, size, hi, 1.5)  # setup and SIZE - 1 load-only steps
    n_cb = cdiv(c - hi, chunk)
    n_pc = cdiv(ow, tow)
    n_q = n * cdiv(oh, toh) * n_pc
    block, warps = 128, 4
    (kh, kw), (sh, sw), _ = pool
    cfg = Config(dict(SIZE=size, BETA=beta, KH=kh, KW=kw, SH=sh, SW=sw, TOH=toh, TOW=tow, BLOCK=block,
                      BIG=big), num_warps=warps)
    return (n_cb * cdiv(n_q, block),), cfg, (n_cb, n_pc, n_q, chunk, last)


def _launch_patch_forward(x, y, am, pool, size, alpha, beta, k) -> None:
    n, c, h, w = x.shape
    oh, ow = y.shape[2:]
    grid, cfg, (n_cb, n_pc, n_q, chunk, last) = _patch_plan(n, c, h, w, oh, ow, x.dtype, pool, size,
                                                            float(beta), needs_int64(x, y))
    launch("relu_lrn_max_pool2d_fwd", _patch_fwd_kernel, grid,
           (x, y, am, c, h, w, oh, ow, n_cb, n_q, n_pc, chunk, last, alpha / size, k), cfg, x.device,
           TINY=tiny_s(alpha, k))


def _patch_bwd_fits(size, pool, h, w, oh, ow, c, dtype) -> bool:
    """Whether the pixel-block backward walk applies: windows inside the plane (no padding, no window
    past the edge), at least 2 * SIZE - 1 channels, a stride no larger than the window, at most 2 x 2
    pixels per block and 2 x 2 windows over it (AlexNet's 3 / 2: 2 x 2 of each), not float64."""
    (kh, kw), (sh, sw), (ph, pw) = pool
    if dtype == torch.float64 or size > 8 or ph or pw or c < 2 * size - 1 or sh > kh or sw > kw:
        return False
    if (oh - 1) * sh + kh > h or (ow - 1) * sw + kw > w or sh * sw > 4:
        return False
    return block_windows(kh, sh, 0)[1] * block_windows(kw, sw, 0)[1] <= 4


@functools.lru_cache(maxsize=256)
def _patch_bwd_plan(n, c, h, w, dtype, pool, size, beta, big):
    (kh, kw), (sh, sw), _ = pool
    # setup, SIZE - 1 load-only steps and SIZE - 1 steps without dx; longer chunks than the forward's
    # (its halo costs more, and a backward program has more pixels to cover)
    chunk, last = _patch_chunks(c, size, size - 1, 1.5 + 0.8 * (size - 1), _PATCH_MAX_CHANNELS_BWD)
    n_cb = cdiv(c - (size - 1), chunk)
    n_bc = cdiv(w, sw)
    n_q = n * cdiv(h, sh) * n_bc
    block, warps = 128, 4
    (oh_lo, nwh), (ow_lo, nww) = block_windows(kh, sh, 0), block_windows(kw, sw, 0)
    cfg = Config(dict(SIZE=size, BETA=beta, KH=kh, KW=kw, SH=sh, SW=sw, OH_LO=oh_lo, NWH=nwh, OW_LO=ow_lo,
                      NWW=nww, BLOCK=block, BIG=big), num_warps=warps)
    return (n_cb * cdiv(n_q, block),), cfg, (n_cb, n_bc, n_q, chunk, last)


def _launch_patch_backward(x, dy, am, dx, pool, size, alpha, beta, k) -> None:
    n, c, h, w = x.shape
    oh, ow = dy.shape[2:]
    grid, cfg, (n_cb, n_bc, n_q, chunk, last) = _patch_bwd_plan(n, c, h, w, x.dtype, pool, size, float(beta),
                                                                needs_int64(x, dy))
    launch("relu_lrn_max_pool2d_bwd", _patch_bwd_kernel, grid,
           (x, dy, am, dx, c, h, w, oh, ow, n_cb, n_q, n_bc, chunk, last, alpha / size, k), cfg, dy.device,
           TINY=tiny_s(alpha, k))


def _lrn_launch_args(lrn):
    size, alpha, beta, k = lrn
    return size, _lrn_window(size), alpha / size, k


def _block_forward(x, kernel, stride, padding, lrn):
    fmt = memory_format(x)
    x = dense(x, fmt)
    n, c, h, w = x.shape
    y, am = pooled_outputs(x, kernel, stride, padding)
    oh, ow = y.shape[2:]
    if y.numel() == 0:
        return y, am
    if not use_triton(x):
        return pool_forward_torch(lrn_forward_torch(x, *lrn), kernel, stride, padding, y, am)
    pool = (tuple(kernel), tuple(stride), tuple(padding))
    # NCHW: the patch walk where its loads are inline PTX (see _common.inline_ptx); channels_last: block_cl's
    # walk; the tile kernel for everything else
    if fmt == torch.contiguous_format and inline_ptx() and _patch_shape(lrn[0], pool, h, w, oh, ow, c,
                                                                        x.dtype):
        _launch_patch_forward(x, y, am, pool, *lrn)
        return y, am
    from . import block_cl  # channels_last: kernels/block_cl.py

    if fmt == torch.channels_last and block_cl.launch_forward(x, y, am, pool, *lrn):
        return y, am
    cfg = _FWD_CONFIGS[fmt]
    grid = (cdiv(c, cfg.constexprs["BLOCK_C"]) * cdiv(oh * ow, cfg.constexprs["BLOCK_P"]) * n,)
    launch("relu_lrn_max_pool2d_fwd", _pool_fwd_kernel, grid,
           (x, y, am, c, h, w, ow, oh * ow, *strides(x.shape, fmt), *strides(y.shape, fmt), *kernel, *stride,
            *padding, *_lrn_launch_args(lrn)), cfg, x.device, BETA=float(lrn[2]), TINY=tiny_s(lrn[1], lrn[3]),
           BIG=needs_int64(x, y))
    return y, am


def _block_backward(dy, am, x, kernel, stride, padding, lrn):
    check_same_device("relu_lrn_max_pool2d", grad=dy, argmax=am, input=x)
    fmt = memory_format(x)
    am = dense(am, fmt)
    dy = dense(dy, fmt)
    x = dense(x, fmt)
    n, c, h, w = x.shape
    dx = input_grad(dy, am, x, (h, w))
    if dx.numel() == 0:
        return dx
    if dy.numel() == 0:
        return dx.zero_()
    if not use_triton(dy):
        return dx.copy_(lrn_backward_torch(x, pool_backward_torch(dy, am, (h, w), kernel, stride, padding),
                                           *lrn))
    pool = (tuple(kernel), tuple(stride), tuple(padding))
    oh, ow = dy.shape[2:]
    if fmt == torch.contiguous_format and inline_ptx() and _patch_bwd_fits(lrn[0], pool, h, w, oh, ow, c,
                                                                           x.dtype):
        _launch_patch_backward(x, dy, am, dx, pool, *lrn)
        return dx
    from . import block_cl  # channels_last: kernels/block_cl.py

    if fmt == torch.channels_last and block_cl.launch_backward(x, dy, am, dx, pool, *lrn):
        return dx
    cfg = _BWD_CONFIGS[fmt]
    grid = (cdiv(c, cfg.constexprs["BLOCK_C"]) * cdiv(h * w, cfg.constexprs["BLOCK_HW"]) * n,)
    launch("relu_lrn_max_pool2d_bwd", _pool_bwd_kernel, grid,
           (x, dy, am, dx, c, h, w, dy.shape[2], dy.shape[3], *strides(x.shape, fmt), *strides(dy.shape, fmt),
            *kernel, *stride, *padding, *_lrn_launch_args(lrn)), cfg, dy.device,
           BETA=float(lrn[2]), TINY=tiny_s(lrn[1], lrn[3]), BIG=needs_int64(x, dy))
    return dx


# ---------------------------------------------------------------------------------- registration


@torch.library.custom_op("alexnet_triton::relu_lrn_max_pool2d", mutates_args=())
def relu_lrn_max_pool2d_op(x: torch.Tensor, size: int, alpha: float, beta: float, k: float,
                           kernel_size: list[int], stride: list[int],
                           padding: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return _block_forward_args(x, size, alpha, beta, k, kernel_size, stride, padding)


@relu_lrn_max_pool2d_op.register_fake
def _(x, size, alpha, beta, k, kernel_size, stride, padding):
    return pooled_outputs(x, kernel_size, stride, padding)


@torch.library.custom_op("alexnet_triton::relu_lrn_max_pool2d_backward", mutates_args=())
def relu_lrn_max_pool2d_backward_op(dy: torch.Tensor, argmax: torch.Tensor, x: torch.Tensor, size: int,
                                    alpha: float, beta: float, k: float, kernel_size: list[int],
                                    stride: list[int], padding: list[int]) -> torch.Tensor:
    return _block_backward_args(dy, argmax, x, size, alpha, beta, k, kernel_size, stride, padding)


@relu_lrn_max_pool2d_backward_op.register_fake
def _(dy, argmax, x, size, alpha, beta, k, kernel_size, stride, padding):
    return input_grad(dy, argmax, x, list(x.shape[2:]))


def _block_setup_context(ctx, inputs, output):
    x, size, alpha, beta, k, kernel_size, stride, padding = inputs
    ctx.save_for_backward(x, output[1])  # the input and one byte per pooled output: nothing else
    ctx.args = (size, alpha, beta, k, kernel_size, stride, padding)


def _block_backward_fn(ctx, dy, _d_argmax):
    x, argmax = ctx.saved_tensors
    return (_block_bwd(dy, argmax, x, *ctx.args),) + (None,) * 7


def _block_forward_args(x, size, alpha, beta, k, kernel_size, stride, padding):
    return _block_forward(x, kernel_size, stride, padding, (size, alpha, beta, k))


def _block_backward_args(dy, argmax, x, size, alpha, beta, k, kernel_size, stride, padding):
    return _block_backward(dy, argmax, x, kernel_size, stride, padding, (size, alpha, beta, k))


relu_lrn_max_pool2d_op.register_autograd(_block_backward_fn, setup_context=_block_setup_context)
_block_bwd = fast_path(relu_lrn_max_pool2d_backward_op, _block_backward_args)
_block = fast_path(relu_lrn_max_pool2d_op, eager_autograd("ReluLRNMaxPool2d", _block_forward_args,
                                                          _block_setup_context, _block_backward_fn).apply)


# ----------------------------------------------------------------------------------------- public


def relu_lrn_max_pool2d(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 2.0, kernel_size=3, stride=2, padding=0) -> torch.Tensor:
    """``max_pool2d(relu_lrn(x, size, alpha, beta, k), kernel_size, stride, padding)`` in one kernel each
    way, saving only x and one byte per pooled output."""
    check_tensor("relu_lrn_max_pool2d", x, ndim=4)
    check_lrn_args("relu_lrn_max_pool2d", size, alpha, beta, k)
    kernel, stride, padding, _ = pool_args("relu_lrn_max_pool2d", x, kernel_size, stride, padding)
    return _block(x, size, float(alpha), float(beta), float(k), list(kernel), list(stride), list(padding))[0]
