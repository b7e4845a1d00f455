"""ReLU + local response normalisation across channels, fused: ``relu_lrn``.

    r = relu(x);  s_c = k + (alpha / size) * sum_{c' in win(c)} r_c'^2;  y_c = r_c * s_c^-beta
    win(c) = [c - size // 2, c + (size - 1) // 2]   (PyTorch's padding, also for even sizes)

Forward reads x once and writes y. Backward saves nothing but x: it recomputes s from x, reads x and dy,
writes dx. NCHW inputs walk the channels (the window lives in registers); so do channels_last inputs, a
thread a pixel, loading up to 16 bytes of a pixel's contiguous channels at once. Windows wider than
WALK_MAX_SIZE use tiles that read the window's channels at neighbouring addresses.
"""

from __future__ import annotations

import functools

import torch

from ._common import (
    Config,
    capability,
    cdiv,
    check_lrn_args,
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

# ------------------------------------------------------------------------------------- kernels

if triton is not None:
    from ._jit import (
        _acc_zeros,
        _grid_ids,
        _in_range,
        _ldv,
        _lrn_dx,
        _lrn_dx_sum,
        _lrn_ta,
        _lrn_y,
        _offset,
        _relu_up,
        _ring_sumsq,
        _shift,
        _stv,
        _tile_ids,
        _upcast,
    )

    @triton.jit
    def _load_x(ptrs, inb, ok, MASKED: tl.constexpr, IN_PLANE: tl.constexpr):
        """A walk's load of one channel: channels outside [0, C) (only in MASKED groups) read as 0,
        PyTorch's zero padding. IN_PLANE: every offset lies inside the plane (the last pixel block
        overlaps its neighbour instead of running past the plane), so bound-free groups load without a
        mask: a masked load costs a zero fill per element."""
        if MASKED:
            return tl.load(ptrs, mask=inb & ok, other=0.0)
        elif IN_PLANE:
            return tl.load(ptrs)
        else:
            return tl.load(ptrs, mask=inb, other=0.0)

    # ----------------------------------------------------------------- NCHW: walking the channels
    # A program owns a block of pixels of one image and a chunk of CHUNK output channels, and walks
    # the channels in order, loading each x once. Per pixel it keeps the last SIZE relu'd values in
    # registers (_jit.py: a shift register; the walk is unrolled by SIZE, so shifting costs nothing).
    # At load i (channel i), the window of channel c = i - HI is complete: y_c is computed and stored.
    # chunk = (c0, c_end, C): the program's output channels [c0, c_end) of C; lrn = (alpha / size, k).
    @triton.jit
    def _fwd_steps(R, i0, chunk, HW, x_img, y_img, hw, inb, lrn, SIZE: tl.constexpr, BETA: tl.constexpr,
                   TINY: tl.constexpr, BIG: tl.constexpr, IN_PLANE: tl.constexpr, MASKED: tl.constexpr):
        """SIZE steps of the forward walk from channel i0: load channel i, finish channel i - HI."""
        LO: tl.constexpr = SIZE // 2
        HI: tl.constexpr = SIZE - 1 - LO
        c0, c_end, C = chunk
        alpha_n, k = lrn
        for j in tl.static_range(SIZE):
            i = i0 + j  # the channel loaded now
            ok_i = _in_range(i, 0, C, MASKED)
            R = _shift(R, _relu_up(_load_x(x_img + _offset(i, BIG) * HW, inb, ok_i, MASKED, IN_PLANE)))
            c = i - HI  # its window [c - LO, c + HI] is in the ring now
            y = _lrn_y(R[LO], _ring_sumsq(R, SIZE), alpha_n, k, BETA, TINY).to(y_img.dtype.element_ty)
            y_c = y_img + _offset(c, BIG) * HW
            if IN_PLANE and not MASKED:  # a pixel two programs hold gets the same value twice
                tl.store(y_c, y)
            else:
                tl.store(y_c, y, mask=inb & _in_range(c, c0, c_end, MASKED))
        return R

    @triton.jit
    def _lrn_fwd_walk_kernel(
        x_ptr,  # *T (N, C, H, W) input, NCHW dense
        y_ptr,  # *T (N, C, H, W) output, NCHW dense
        C, HW,  # channels, pixels per plane
        n_cb, n_t,  # channel chunks, pixel blocks per image
        alpha_n, k,  # alpha / size, additive constant
        SIZE: tl.constexpr, BETA: tl.constexpr,  # LRN window and exponent: one build per value
        TINY: tl.constexpr,  # s may be subnormal (k < 2^-126): scaled around the approximations (_pow_neg)
        BLOCK: tl.constexpr, CHUNK: tl.constexpr,  # pixels and output channels per program
        BIG: tl.constexpr,  # int64 channel offsets
        IN_PLANE: tl.constexpr,  # every load offset inside the plane (see _load_x)
    ):
        LO: tl.constexpr = SIZE // 2
        cb, t, n = _grid_ids(n_cb, n_t)
        # contiguity 1: AlexNet's odd planes defeat vector access anyway, and one layout for every load
        # and store keeps Triton from converting between layouts through shared memory
        if IN_PLANE:  # the last block overlaps its neighbour rather than running past the plane
            start = tl.minimum(t * BLOCK, HW - BLOCK)
        else:
            start = t * BLOCK
        # the block's start and each thread's pixels go into per-thread pointers, set once: a channel
        # step adds one offset to them (an IMAD.WIDE a pointer), and a thread's pixels stay immediate
        # offsets of one address
        hw = tl.max_contiguous(tl.arange(0, BLOCK), 1)
        img = n.to(tl.int64) * C * HW + start
        x_img = x_ptr + img + hw
        y_img = y_ptr + img + hw
        inb = hw < HW - start
        R = (_acc_zeros(hw, x_ptr),) * SIZE  # relu'd x of the last SIZE channels, oldest first

        c0 = cb * CHUNK
        c_end = tl.minimum(c0 + CHUNK, C)
        # Groups of SIZE steps. Group 0 warms the ring up and the last ones may run past C or c_end:
        # only those check channel bounds; groups [1, g1) are bound-free.
        n_g = tl.cdiv(c_end - c0 + SIZE - 1, SIZE)
        g1 = tl.minimum((c_end - c0 - 1) // SIZE, (C - c0 + LO - SIZE) // SIZE) + 1
        g1 = tl.minimum(tl.maximum(g1, 1), n_g)
        args = ((c0, c_end, C), HW, x_img, y_img, hw, inb, (alpha_n, k))
        R = _fwd_steps(R, c0 - LO, *args, SIZE=SIZE, BETA=BETA, TINY=TINY, BIG=BIG, IN_PLANE=IN_PLANE,
                       MASKED=True)
        for g in range(1, g1):
            R = _fwd_steps(R, c0 - LO + g * SIZE, *args, SIZE=SIZE, BETA=BETA, TINY=TINY, BIG=BIG,
                           IN_PLANE=IN_PLANE, MASKED=False)
        for g in range(g1, n_g):
            R = _fwd_steps(R, c0 - LO + g * SIZE, *args, SIZE=SIZE, BETA=BETA, TINY=TINY, BIG=BIG,
                           IN_PLANE=IN_PLANE, MASKED=True)

    # Backward, walking the channels the same way. With r = relu(x), s_c = k + (alpha/size) *
    # sum_{c' in win(c)} r_c'^2, and g the gradient of the LRN output:
    #   t_c = g_c * r_c * s_c^-(beta+1),  a_c = g_c * s_c^-beta
    #   dx_c = [x_c > 0] * (a_c - 2 * (alpha/size) * beta * r_c * sum_{c': c in win(c')} t_c')
    # and c in win(c') <=> c' in [c - HI, c + LO]. Three rings per pixel: R (r), T (t), A (a). At load
    # i, s is complete for j = i - HI (t_j, a_j go in), and dx is complete for c = i - SIZE + 1 (its
    # t's are the last SIZE). Sums never subtract: inf and NaN behave as in the direct formula.
    # ptrs = (x_img, dy_img, dx_img); lrn = (alpha / size, k, coef = 2 (alpha / size) beta).
    @triton.jit
    def _bwd_steps(R, T, A, i0, chunk, HW, ptrs, hw, inb, lrn, SIZE: tl.constexpr, BETA: tl.constexpr,
                   TINY: tl.constexpr, BIG: tl.constexpr, IN_PLANE: tl.constexpr, MASKED: tl.constexpr,
                   WARM: tl.constexpr):
        """SIZE steps of the backward walk from channel i0: load channel i, finish t and a of channel
        i - HI and dx of channel i - SIZE + 1 (not in the WARM group 0, whose dx lie before the chunk if
        SIZE > 1)."""
        LO: tl.constexpr = SIZE // 2
        HI: tl.constexpr = SIZE - 1 - LO
        c0, c_end, C = chunk
        x_img, dy_img, dx_img = ptrs
        alpha_n, k, coef = lrn
        for j in tl.static_range(SIZE):
            i = i0 + j  # the channel loaded now
            cj = i - HI  # s is complete for cj
            ok_j = _in_range(cj, 0, C, MASKED)
            g = _upcast(_load_x(dy_img + _offset(cj, BIG) * HW, inb, ok_j, MASKED, IN_PLANE))
            ok_i = _in_range(i, 0, C, MASKED)
            R = _shift(R, _relu_up(_load_x(x_img + _offset(i, BIG) * HW, inb, ok_i, MASKED, IN_PLANE)))
            t_j, a_j = _lrn_ta(R, g, alpha_n, k, SIZE, BETA, TINY)
            if MASKED:  # channels outside [0, C) have no t or a (not even NaN from s = 0)
                t_j = tl.where(ok_j, t_j, 0.0)
                a_j = tl.where(ok_j, a_j, 0.0)
            T = _shift(T, t_j)
            A = _shift(A, a_j)
            if not WARM:
                c = i - (SIZE - 1)  # dx is complete for c
                dx = _lrn_dx(R[0], A[HI], T, coef, SIZE).to(dx_img.dtype.element_ty)
                dx_c = dx_img + _offset(c, BIG) * HW
                if IN_PLANE and not MASKED:  # duplicates store equal values
                    tl.store(dx_c, dx)
                else:
                    tl.store(dx_c, dx, mask=inb & _in_range(c, c0, c_end, MASKED))
        return R, T, A

    @triton.jit
    def _lrn_bwd_walk_kernel(
        x_ptr,  # *T (N, C, H, W) the forward's input, NCHW dense
        dy_ptr,  # *T (N, C, H, W) gradient of the output, NCHW dense
        dx_ptr,  # *T (N, C, H, W) gradient of the input, NCHW dense
        C, HW, n_cb, n_t, alpha_n, k,  # as the forward's
        SIZE: tl.constexpr, BETA: tl.constexpr, TINY: tl.constexpr,
        BLOCK: tl.constexpr, CHUNK: tl.constexpr, BIG: tl.constexpr, IN_PLANE: tl.constexpr,
    ):
        cb, t, n = _grid_ids(n_cb, n_t)
        if IN_PLANE:  # as in the forward
            start = tl.minimum(t * BLOCK, HW - BLOCK)
        else:
            start = t * BLOCK
        hw = tl.max_contiguous(tl.arange(0, BLOCK), 1)  # contiguity 1: as in the forward
        img = n.to(tl.int64) * C * HW + start
        ptrs = (x_ptr + img + hw, dy_ptr + img + hw, dx_ptr + img + hw)
        inb = hw < HW - start
        zero = _acc_zeros(hw, x_ptr)
        R = (zero,) * SIZE
        T = R
        A = R
        lrn = (alpha_n, k, (zero + alpha_n) * (2.0 * BETA))  # coef in the compute dtype (float64 for float64)

        c0 = cb * CHUNK
        c_end = tl.minimum(c0 + CHUNK, C)
        # Groups of SIZE steps: groups 0 and 1 warm the rings up, the last ones may run past C or c_end;
        # only those check channel bounds, groups [2, g1) are bound-free.
        n_g = tl.cdiv(c_end - c0 + 2 * SIZE - 2, SIZE)
        g1 = tl.minimum((C - c0 - 1) // SIZE, (c_end - c0 + SIZE - 2) // SIZE) + 1
        g1 = tl.minimum(tl.maximum(g1, 2), n_g)
        args = ((c0, c_end, C), HW, ptrs, hw, inb, lrn)
        R, T, A = _bwd_steps(R, T, A, c0 - (SIZE - 1), *args, SIZE=SIZE, BETA=BETA, TINY=TINY, BIG=BIG,
                             IN_PLANE=IN_PLANE, MASKED=True, WARM=SIZE > 1)
        if n_g > 1:
            R, T, A = _bwd_steps(R, T, A, c0 + 1, *args, SIZE=SIZE, BETA=BETA, TINY=TINY, BIG=BIG,
                                 IN_PLANE=IN_PLANE, MASKED=True, WARM=False)
        for g in range(2, g1):
            R, T, A = _bwd_steps(R, T, A, c0 - (SIZE - 1) + g * SIZE, *args, SIZE=SIZE, BETA=BETA, TINY=TINY,
                                 BIG=BIG, IN_PLANE=IN_PLANE, MASKED=False, WARM=False)
        for g in range(tl.maximum(g1, 2), n_g):
            R, T, A = _bwd_steps(R, T, A, c0 - (SIZE - 1) + g * SIZE, *args, SIZE=SIZE, BETA=BETA, TINY=TINY,
                                 BIG=BIG, IN_PLANE=IN_PLANE, MASKED=True, WARM=False)

    # ------------------------------------------ windows wider than WALK_MAX_SIZE (either layout): tiles
    # A program owns a (BLOCK_C channels x BLOCK_HW pixels) tile and reads each channel's window from
    # cache. The window sum runs over channels in the same order as the walking kernels' (oldest first)
    # and s^-beta is the same _pow_neg, so both give the same values.
    @triton.jit
    def _relu_lrn_fwd_kernel(
        x_ptr,  # *T (N, C, H, W) input, NCHW or channels_last dense
        y_ptr,  # *T (N, C, H, W) output, same layout as x
        C, HW,  # channels, H * W
        s_n, s_c, s_hw,  # strides in elements (from the shape and layout: (C*HW, HW, 1) or (C*HW, 1, C))
        alpha_n, k,  # alpha / size, additive constant
        SIZE: tl.constexpr, BETA: tl.constexpr, TINY: tl.constexpr, BIG: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
    ):
        LO: tl.constexpr = SIZE // 2
        pid_c, pid_hw, n = _tile_ids(C, BLOCK_C, HW, BLOCK_HW)
        c = (pid_c * BLOCK_C + tl.arange(0, BLOCK_C))[:, None]  # (BLOCK_C, 1)
        hw = (pid_hw * BLOCK_HW + tl.arange(0, BLOCK_HW))[None, :]  # (1, BLOCK_HW)
        valid = (c < C) & (hw < HW)
        if BIG:
            c = c.to(tl.int64)
            hw = hw.to(tl.int64)
        x_img = x_ptr + n.to(tl.int64) * s_n
        y_img = y_ptr + n.to(tl.int64) * s_n
        sp = hw * s_hw
        w = ()
        for d in tl.static_range(SIZE):  # channels c - LO .. c + HI, oldest first as in the walks
            cc = c + (d - LO)
            m = valid & (cc >= 0) & (cc < C)
            w = w + (_relu_up(tl.load(x_img + cc * s_c + sp, mask=m, other=0.0)),)
        y = _lrn_y(w[LO], _ring_sumsq(w, SIZE), alpha_n, k, BETA, TINY)
        tl.store(y_img + c * s_c + sp, y.to(y_ptr.dtype.element_ty), mask=valid)

    # Backward (see _lrn_bwd_walk_kernel for the derivation). The 2 * SIZE - 1 channels around c are
    # read once; the SIZE windows of the c' with c in win(c') are summed from them in registers, in the
    # walks' order, so a channels_last tile gives the values of an NCHW walk.
    @triton.jit
    def _relu_lrn_bwd_kernel(
        x_ptr,  # *T (N, C, H, W) the forward's input
        dy_ptr,  # *T (N, C, H, W) gradient of the output, same layout as x
        dx_ptr,  # *T (N, C, H, W) gradient of the input, same layout as x
        C, HW,  # channels, H * W
        s_n, s_c, s_hw,  # strides of x, dy, dx in elements
        alpha_n, k,  # alpha / size, additive constant
        SIZE: tl.constexpr, BETA: tl.constexpr, TINY: tl.constexpr, BIG: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
    ):
        LO: tl.constexpr = SIZE // 2
        HI: tl.constexpr = SIZE - 1 - LO
        pid_c, pid_hw, n = _tile_ids(C, BLOCK_C, HW, BLOCK_HW)
        c = (pid_c * BLOCK_C + tl.arange(0, BLOCK_C))[:, None]
        hw = (pid_hw * BLOCK_HW + tl.arange(0, BLOCK_HW))[None, :]
        valid = (c < C) & (hw < HW)
        if BIG:
            c = c.to(tl.int64)
            hw = hw.to(tl.int64)
        x_img = x_ptr + n.to(tl.int64) * s_n
        dy_img = dy_ptr + n.to(tl.int64) * s_n
        dx_img = dx_ptr + n.to(tl.int64) * s_n
        sp = hw * s_hw
        zero = _acc_zeros(valid, x_ptr)
        rs = ()  # relu(x) at channels c - (SIZE - 1) .. c + SIZE - 1
        for e in tl.static_range(2 * SIZE - 1):
            cc = c + (e - (SIZE - 1))
            m = valid & (cc >= 0) & (cc < C)
            rs = rs + (_relu_up(tl.load(x_img + cc * s_c + sp, mask=m, other=0.0)),)
        t_sum = zero
        a_c = zero
        for d in tl.static_range(SIZE):  # c' = c + d - HI over [c - HI, c + LO]; its window is rs[d:d+SIZE]
            cp = c + (d - HI)
            m = valid & (cp >= 0) & (cp < C)
            g = _upcast(tl.load(dy_img + cp * s_c + sp, mask=m, other=0.0))
            t, a = _lrn_ta(rs[d:d + SIZE], g, alpha_n, k, SIZE, BETA, TINY)
            t = tl.where(m, t, 0.0)
            if d == 0:
                t_sum = t
            else:
                t_sum += t
            if d == HI:
                a_c = a
        r_c = rs[SIZE - 1]
        coef = (zero + alpha_n) * (2.0 * BETA)  # in the compute dtype (float64 for float64)
        dx = _lrn_dx_sum(r_c, a_c, t_sum, coef)
        tl.store(dx_img + c * s_c + sp, dx.to(dx_ptr.dtype.element_ty), mask=valid)

    # ------------------------------------------------- channels_last: walking the channels of a pixel
    # In channels_last the channels of a pixel are contiguous. A thread owns one pixel (pixels of all
    # images form one axis: offset q * C + c) and walks its channels in order as the NCHW walks do,
    # VEC channels per load (an aligned 64- or 128-bit inline PTX load: _ldv), keeping the last relu'd
    # values in registers (a tuple used as a shift register, oldest first). A step loads the vector at
    # channel i and finishes the vector of outputs D channels behind it, whose windows it now holds;
    # sums run over the window oldest first with the walks' expressions, so both layouts give the same
    # bits. WHOLE: one program walks all C channels (C >= D + VEC): the edges are static (loads before
    # channel 0 or past C are zeros known at compile time, nothing is masked or clamped). Otherwise the
    # program walks a chunk [c0, c0 + CHUNK) and every step clamps its loads into [0, C) and zeroes
    # what lies outside.
    @triton.jit
    def _cl_load(ring, row, i, C, VEC: tl.constexpr, LOAD: tl.constexpr):
        """The ring with the relu'd x of channels [i, i + VEC) appended (its oldest VEC dropped). LOAD: 0
        zeros (channels known to lie outside [0, C)), 1 a plain load, 2 a load clamped into [0, C) whose
        values outside read as 0 (PyTorch's zero padding)."""
        if LOAD == 0:
            for _e in tl.static_range(VEC):
                ring = _shift(ring, tl.zeros_like(ring[0]))
        elif LOAD == 1:
            v = _ldv(row + i, VEC)
            for e in tl.static_range(VEC):
                ring = _shift(ring, _relu_up(v[e]))
        else:
            ok = (i >= 0) & (i < C)
            v = _ldv(row + tl.minimum(tl.maximum(i, 0), C - VEC), VEC)
            for e in tl.static_range(VEC):
                ring = _shift(ring, tl.where(ok, _relu_up(v[e]), 0.0))
        return ring

    @triton.jit
    def _cl_fwd_step(ring, x_row, y_row, i, C, alpha_n, k, SIZE: tl.constexpr, BETA: tl.constexpr,
                     TINY: tl.constexpr,
                     VEC: tl.constexpr, D: tl.constexpr, LOAD: tl.constexpr):
        """Load channels [i, i + VEC) (as _cl_load) and store y of channels [i - D, i - D + VEC). The ring
        (D + LO + VEC values) then holds channels [i - D - LO, i + VEC): output i - D + e's window starts
        at ring[e]."""
        LO: tl.constexpr = SIZE // 2
        ring = _cl_load(ring, x_row, i, C, VEC, LOAD)
        ys = ()
        for e in tl.static_range(VEC):
            w = ring[e:e + SIZE]
            ys = ys + (_lrn_y(w[LO], _ring_sumsq(w, SIZE), alpha_n, k, BETA, TINY),)
        _stv(y_row + (i - D), ys, VEC)
        return ring

    @triton.jit
    def _relu_lrn_cl_fwd_kernel(
        x_ptr,  # *T (N, C, H, W) input, channels_last dense
        y_ptr,  # *T (N, C, H, W) output, channels_last dense
        C, NP,  # channels, pixels of all images (N * H * W)
        n_cb, CHUNK,  # channel chunks and their length (a multiple of VEC; not WHOLE)
        alpha_n, k,  # alpha / size, additive constant
        SIZE: tl.constexpr, BETA: tl.constexpr, TINY: tl.constexpr,
        VEC: tl.constexpr,  # channels per load (C and the pointers aligned to it)
        BLOCK_P: tl.constexpr, UNROLL: tl.constexpr,  # pixels per program; steps per main-loop trip
        WHOLE: tl.constexpr,  # one program walks all C >= D + VEC channels: static edges
    ):
        LO: tl.constexpr = SIZE // 2
        HI: tl.constexpr = SIZE - 1 - LO
        D: tl.constexpr = (HI + VEC - 1) // VEC * VEC  # outputs lag the loads by D channels
        pid = tl.program_id(0)
        t = pid // n_cb
        cb = pid - t * n_cb
        # the last block's pixels past NP repeat the last pixel (the same values stored twice): no masks
        q = tl.minimum(t * BLOCK_P + tl.arange(0, BLOCK_P), NP - 1)
        row = q.to(tl.int64) * C  # once per thread, so int64 whatever the size
        x_row = x_ptr + row
        y_row = y_ptr + row
        zero = _acc_zeros(q, x_ptr)
        ring = (zero,) * (D + LO + VEC)  # channels before the first load read as 0
        if WHOLE:
            c0 = 0
            for m in tl.static_range(D // VEC):
                ring = _cl_load(ring, x_row, m * VEC, C, VEC, 1)
            n_ok = (C - D) // VEC  # steps whose load lies in [0, C)
        else:
            PRE: tl.constexpr = (LO + VEC - 1) // VEC * VEC
            c0 = cb * CHUNK
            c_end = tl.minimum(c0 + CHUNK, C)
            for m in tl.static_range((PRE + D) // VEC):
                ring = _cl_load(ring, x_row, c0 - PRE + m * VEC, C, VEC, 2)
            n_ok = (tl.maximum(tl.minimum(c_end, C - D), c0) - c0) // VEC
        for g in range(0, n_ok // UNROLL):
            for u in tl.static_range(UNROLL):
                ring = _cl_fwd_step(ring, x_row, y_row, c0 + (g * UNROLL + u) * VEC + D, C, alpha_n, k, SIZE,
                                    BETA, TINY, VEC, D, 1)
        for m in range(n_ok // UNROLL * UNROLL, n_ok):
            ring = _cl_fwd_step(ring, x_row, y_row, c0 + m * VEC + D, C, alpha_n, k, SIZE, BETA, TINY,
                                VEC, D, 1)
        if WHOLE:  # the last D channels: loads past C, zeros
            for m in tl.static_range(D // VEC):
                ring = _cl_fwd_step(ring, x_row, y_row, C + m * VEC, C, alpha_n, k, SIZE, BETA, TINY, VEC,
                                    D, 0)
        else:
            for c in range(c0 + n_ok * VEC, c_end, VEC):
                ring = _cl_fwd_step(ring, x_row, y_row, c + D, C, alpha_n, k, SIZE, BETA, TINY, VEC, D, 2)

    # Backward (the formula above _lrn_bwd_walk_kernel, its expressions): a step loads x at channel i,
    # computes t and a of channels [j, j + VEC), j = i - DA (loading dy there), and dx of channels
    # [c, c + VEC), c = j - DB. Rings: R, relu'd x of [c, i + VEC) (DA + DB + VEC values); T, t of
    # [c - HI, j + VEC) (DB + HI + VEC); A, a of [c, j + VEC) (DB + VEC): dx of c + e reads R[e], A[e] and
    # T[e:e + SIZE], t of j + e reads the window R[e + DB - LO:][:SIZE].
    @triton.jit
    def _cl_bwd_step(R, T, A, x_row, dy_row, dx_row, i, C, alpha_n, k, coef, SIZE: tl.constexpr,
                     BETA: tl.constexpr, TINY: tl.constexpr, VEC: tl.constexpr, DA: tl.constexpr,
                     DB: tl.constexpr,
                     LOAD: tl.constexpr, TA: tl.constexpr, DX: tl.constexpr):
        """LOAD as _cl_load's; TA: 0 no t stage, 1 t and a of zeros (channels known to lie outside
        [0, C)), 2 computed, 3 computed with dy clamped into [0, C) and t, a zero outside; DX: store dx."""
        LO: tl.constexpr = SIZE // 2
        R = _cl_load(R, x_row, i, C, VEC, LOAD)
        j = i - DA
        if TA == 1:
            for _e in tl.static_range(VEC):
                T = _shift(T, tl.zeros_like(T[0]))
                A = _shift(A, tl.zeros_like(A[0]))
        elif TA >= 2:
            if TA == 3:
                ok = (j >= 0) & (j < C)
                g = _ldv(dy_row + tl.minimum(tl.maximum(j, 0), C - VEC), VEC)
            else:
                g = _ldv(dy_row + j, VEC)
            for e in tl.static_range(VEC):
                w = R[e + DB - LO:e + DB - LO + SIZE]
                t_j, a_j = _lrn_ta(w, g[e], alpha_n, k, SIZE, BETA, TINY)
                if TA == 3:  # channels outside [0, C) have no t or a
                    t_j = tl.where(ok, t_j, 0.0)
                    a_j = tl.where(ok, a_j, 0.0)
                T = _shift(T, t_j)
                A = _shift(A, a_j)
        if DX:
            dxs = ()
            for e in tl.static_range(VEC):
                dxs = dxs + (_lrn_dx(R[e], A[e], T[e:e + SIZE], coef, SIZE),)
            _stv(dx_row + (j - DB), dxs, VEC)
        return R, T, A

    @triton.jit
    def _relu_lrn_cl_bwd_kernel(
        x_ptr,  # *T (N, C, H, W) the forward's input, channels_last dense
        dy_ptr,  # *T (N, C, H, W) gradient of the output, channels_last dense
        dx_ptr,  # *T (N, C, H, W) gradient of the input, channels_last dense
        C, NP, n_cb, CHUNK, alpha_n, k,  # as the forward's
        SIZE: tl.constexpr, BETA: tl.constexpr, TINY: tl.constexpr, VEC: tl.constexpr, BLOCK_P: tl.constexpr,
        UNROLL: tl.constexpr,
        WHOLE: tl.constexpr,  # one program walks all C >= DA + DB + VEC channels: static edges
    ):
        LO: tl.constexpr = SIZE // 2
        HI: tl.constexpr = SIZE - 1 - LO
        DA: tl.constexpr = (HI + VEC - 1) // VEC * VEC  # t and a lag the x loads by DA channels
        DB: tl.constexpr = (LO + VEC - 1) // VEC * VEC  # dx lags t and a by DB (HI <= LO: DA <= DB)
        pid = tl.program_id(0)
        t = pid // n_cb
        cb = pid - t * n_cb
        q = tl.minimum(t * BLOCK_P + tl.arange(0, BLOCK_P), NP - 1)  # as in the forward
        row = q.to(tl.int64) * C
        x_row = x_ptr + row
        dy_row = dy_ptr + row
        dx_row = dx_ptr + row
        zero = _acc_zeros(q, x_ptr)
        coef = (zero + alpha_n) * (2.0 * BETA)  # in the compute dtype (float64 for float64)
        R = (zero,) * (DA + DB + VEC)
        T = (zero,) * (DB + HI + VEC)
        A = (zero,) * (DB + VEC)
        if WHOLE:
            # c0 = 0: the rings start as zeros (channels < 0); t and a of j from -DB, so that dx of channel
            # 0 has its window; steps loading nothing into rings of zeros are left out
            for m in tl.static_range(2 * DB // VEC):
                if m * VEC + DA - DB >= 0:  # i = j + DA, j = m * VEC - DB: t and a of zeros while j < 0
                    R, T, A = _cl_bwd_step(R, T, A, x_row, dy_row, dx_row, m * VEC + DA - DB, C, alpha_n, k,
                                           coef, SIZE, BETA, TINY, VEC, DA, DB, 1,
                                           2 if m * VEC >= DB else 1, False)
            c0 = 0
            n_ok = (C - DA - DB) // VEC  # steps whose x load lies in [0, C)
        else:
            c0 = cb * CHUNK
            c_end = tl.minimum(c0 + CHUNK, C)
            for m in tl.static_range((DA + DB) // VEC):  # x of [c0 - 2 DB, c0 - DB + DA)
                R, T, A = _cl_bwd_step(R, T, A, x_row, dy_row, dx_row, c0 - 2 * DB + m * VEC, C, alpha_n, k,
                                       coef, SIZE, BETA, TINY, VEC, DA, DB, 2, 0, False)
            for m in tl.static_range(2 * DB // VEC):  # t and a of [c0 - DB, c0 + DB)
                R, T, A = _cl_bwd_step(R, T, A, x_row, dy_row, dx_row, c0 - DB + DA + m * VEC, C, alpha_n, k,
                                       coef, SIZE, BETA, TINY, VEC, DA, DB, 2, 3, False)
            n_ok = (tl.maximum(tl.minimum(c_end, C - DA - DB), c0) - c0) // VEC
        for g in range(0, n_ok // UNROLL):
            for u in tl.static_range(UNROLL):
                R, T, A = _cl_bwd_step(R, T, A, x_row, dy_row, dx_row, c0 + (g * UNROLL + u) * VEC + DA + DB,
                                       C, alpha_n, k, coef, SIZE, BETA, TINY, VEC, DA, DB, 1, 2, True)
        for m in range(n_ok // UNROLL * UNROLL, n_ok):
            R, T, A = _cl_bwd_step(R, T, A, x_row, dy_row, dx_row, c0 + m * VEC + DA + DB, C, alpha_n, k,
                                   coef, SIZE, BETA, TINY, VEC, DA, DB, 1, 2, True)
        if WHOLE:
            for m in tl.static_range((DA + DB) // VEC):  # i = C + m * VEC: past C (so is j from m = DA / VEC)
                R, T, A = _cl_bwd_step(R, T, A, x_row, dy_row, dx_row, C + m * VEC, C, alpha_n, k, coef, SIZE,
                                       BETA, TINY, VEC, DA, DB, 0, 2 if m * VEC < DA else 1, True)
        else:
            for c in range(c0 + n_ok * VEC, c_end, VEC):
                R, T, A = _cl_bwd_step(R, T, A, x_row, dy_row, dx_row, c + DA + DB, C, alpha_n, k, coef, SIZE,
                                       BETA, TINY, VEC, DA, DB, 2, 3, True)

# ------------------------------------------------------------------------------------ launchers

# Tiles of the wide-window kernels (SIZE > WALK_MAX_SIZE, either layout).
_TILE_FWD = Config(dict(BLOCK_C=32, BLOCK_HW=32), num_warps=4)
_TILE_BWD = Config(dict(BLOCK_C=32, BLOCK_HW=32), num_warps=8)
WALK_MAX_SIZE = 16  # the walking kernels keep SIZE values per pixel and ring in registers
_WALK_CHANNELS = 32  # about this many output channels per program


def strides(shape, fmt) -> tuple[int, int, int, int]:
    """Element strides of a dense (N, C, H, W) tensor in ``fmt``, from its shape alone: PyTorch's own
    strides of size-1 dimensions can be anything (``torch.randn(1, 4, 1, 6).transpose(2, 3)`` is
    contiguous with stride(3) == 6)."""
    _, c, h, w = shape
    if fmt == torch.channels_last:
        return (c * h * w, 1, w * c, c)
    return (c * h * w, h * w, w, 1)


def needs_int64(*tensors) -> bool:
    """Offsets inside one image are int32 unless an image (input or output) nears 2^31 elements."""
    return any(t.shape[0] > 0 and t.shape[1] * t.shape[2] * t.shape[3] >= 2**31 - 2**24
               for t in tensors if t.dim() == 4)


def _chunk(c: int, size: int, halo: int, target: int = _WALK_CHANNELS) -> int:
    """Output channels per program: the c channels split evenly into about c / target chunks, each
    rounded up so that chunk + halo is a multiple of size (the walk, unrolled by size, wastes no step)."""
    even = -(-c // max(1, round(c / target)))
    q = -(-(even + halo) // size)
    return max(1, q * size - halo)


def _pixel_block(hw: int) -> tuple[int, int]:
    """(pixels per program, warps): 4 pixels per thread, the block that wastes least of the plane."""
    best = min((cdiv(hw, b) * b / hw, -b) for b in (512, 256, 128))
    b = -best[1]
    return b, b // 128


def walk_fits(size: int) -> bool:
    return size <= WALK_MAX_SIZE


def launch_walk_forward(x, y, size, alpha, beta, k) -> None:
    """relu_lrn forward, NCHW."""
    n, c, h, w = x.shape
    grid, cfg, (n_cb, n_t) = _fwd_plan(n, c, h * w, size, float(beta), needs_int64(x))
    launch("relu_lrn_fwd", _lrn_fwd_walk_kernel, grid, (x, y, c, h * w, n_cb, n_t, alpha / size, k), cfg,
           x.device, TINY=tiny_s(alpha, k))


def launch_walk_backward(x, dy, dx, size, alpha, beta, k) -> None:
    """relu_lrn backward, NCHW."""
    n, c, h, w = x.shape
    grid, cfg, (n_cb, n_t) = _bwd_plan(n, c, h * w, x.dtype, size, float(beta), needs_int64(x), capability(x))
    launch("relu_lrn_bwd", _lrn_bwd_walk_kernel, grid, (x, dy, dx, c, h * w, n_cb, n_t, alpha / size, k),
           cfg, x.device, TINY=tiny_s(alpha, k))


# The launch plans are pure functions of the shapes and settings, cached: an op's host work per call is a
# dictionary lookup (the host time per call is what small AlexNet layers are bound by on a GPU).
@functools.lru_cache(maxsize=256)
def _fwd_plan(n, c, hw, size, beta, big):
    """(grid, config, (channel chunks, pixel blocks per image)) of the forward walk."""
    chunk = _chunk(c, size, size - 1)
    n_cb = cdiv(c, chunk)
    block, warps = _pixel_block(hw)
    n_t = cdiv(hw, block)
    cfg = Config(dict(SIZE=size, BETA=beta, BLOCK=block, CHUNK=chunk, BIG=big, IN_PLANE=hw >= block),
                 num_warps=warps)
    return (n_cb * n_t * n,), cfg, (n_cb, n_t)


def _bwd_pixels(dtype, size: int, block: int, cap: int) -> int:
    """Pixels a backward-walk thread owns: 4 (AlexNet's SIZE 5), or fewer for wider windows and float64. A
    thread keeps three rings of SIZE values a pixel (relu(x), t, a), two registers a value in float64;
    past 60 registers of rings ptxas spills on some targets (16-bit values at SIZE 9 on sm_90a, float64
    from SIZE 5)."""
    pixels = 4
    if dtype == torch.bfloat16 and 0 < cap < 80:  # NVIDIA before sm_80 (no bfloat16 conversion): Triton's
        pixels = 2  # emulated rounding spills with 4 on sm_75
    if block == 256 and dtype == torch.float32:  # 4 float32 pixels a thread over 2 warps: ptxas spills
        pixels = 2
    words = 2 if dtype == torch.float64 else 1
    while pixels > 1 and 3 * size * pixels * words > 60:
        pixels //= 2
    return pixels


@functools.lru_cache(maxsize=256)
def _bwd_plan(n, c, hw, dtype, size, beta, big, cap):
    # long chunks: each costs a halo of 2 * (size - 1) channels and three bound-checked groups; the price
    # is fewer programs (AlexNet's conv2 LRN: 768 of 2 warps), for a GPU run to weigh
    chunk = _chunk(c, size, 2 * size - 2, 4 * _WALK_CHANNELS)
    n_cb = cdiv(c, chunk)
    block, _ = _pixel_block(hw)
    pixels = _bwd_pixels(dtype, size, block, cap)
    block = min(block, 256 * pixels)  # at most 8 warps: 255 registers a thread (64K a block)
    n_t = cdiv(hw, block)
    # Registers (see Config). 4 16-bit pixels in a 2-warp block, or one pixel of a wide window: left to
    # choose, ptxas aims at 96 or 128 registers (sm_80, sm_75) and spills 8 bytes; given the hardware's cap
    # it takes what the rings need. 4 pixels in 4 warps (AlexNet's conv1): left to choose, ptxas takes 96
    # on sm_90a, 5 blocks an SM (1.16 waves at conv1's shape); 80 keeps 6 (0.97 waves) for 3% more
    # instructions (72, 7 blocks, spills on sm_100).
    if pixels == 1 or (pixels == 4 and block == 256):
        registers = 255
    else:
        registers = 80 if pixels == 4 else None
    cfg = Config(dict(SIZE=size, BETA=beta, BLOCK=block, CHUNK=chunk, BIG=big, IN_PLANE=hw >= block),
                 num_warps=block // (32 * pixels), max_registers=registers)
    return (n_cb * n_t * n,), cfg, (n_cb, n_t)


def tiny_s(alpha: float, k: float) -> bool:
    """Whether s = k + (alpha / size) * sum r^2 may fall below float32's normal range (k < 2^-126, k = 0
    included, or alpha < 0): the kernels then scale s around their flush-to-zero approximations (_jit.py's
    _pow_neg, TINY), which would read a subnormal s as 0 and give inf where PyTorch is finite."""
    return not k >= 2.0 ** -126 or alpha < 0


def _lrn_window(size: int) -> int:
    return size // 2  # channels before c: PyTorch pads (size // 2, (size - 1) // 2)


def _launch_tile(kernel, name, tensors, x, fmt, size, alpha, beta, k) -> None:
    n, c, h, w = x.shape
    cfg = _TILE_FWD if kernel is _relu_lrn_fwd_kernel else _TILE_BWD
    s_n, s_c, _, s_w = strides(x.shape, fmt)
    grid = (cdiv(c, cfg.constexprs["BLOCK_C"]) * cdiv(h * w, cfg.constexprs["BLOCK_HW"]) * n,)
    launch(name, kernel, grid, (*tensors, c, h * w, s_n, s_c, s_w, alpha / size, k), cfg, x.device,
           SIZE=size, BETA=float(beta), TINY=tiny_s(alpha, k), BIG=needs_int64(x))



_CL_BLOCK = 128  # pixels per program of the channels_last walks (one a thread)
_CL_THREADS = 2**17  # below this many pixels, the channels are split into chunks (more programs)


def _cl_vec(c: int, tensors) -> int:
    """Channels per load of the channels_last walks: up to 16 bytes, a power of two dividing C, with
    every tensor's data aligned to it (a view may start anywhere)."""
    dtype = tensors[0].dtype
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return 1
    es = tensors[0].element_size()
    vec = 16 // es
    while vec > 1 and (c % vec or any(t.data_ptr() % (vec * es) for t in tensors)):
        vec //= 2
    return vec


@functools.lru_cache(maxsize=256)
def _cl_plan(n, c, h, w, size, beta, vec, backward, threads):
    """(grid, config, chunks, chunk length) of a channels_last walk; fewer than ``threads`` pixels split
    the channels."""
    lo = size // 2
    hi = size - 1 - lo
    lag = cdiv(hi, vec) * vec + (cdiv(lo, vec) * vec if backward else 0)  # outputs lag the x loads so much
    np_ = n * h * w
    block = _CL_BLOCK if np_ >= _CL_BLOCK else 32
    # split the channels when the pixels alone give few threads, in chunks of at least 16 channels
    n_cb = max(1, min(threads // np_, c // max(16, 2 * vec)))
    chunk = cdiv(cdiv(c, n_cb), vec) * vec
    n_cb = cdiv(c, chunk)
    cfg = Config(dict(SIZE=size, BETA=beta, VEC=vec, BLOCK_P=block, UNROLL=2 if vec > 1 else 4,
                      WHOLE=n_cb == 1 and c >= lag + vec), num_warps=block // 32)
    return (n_cb * cdiv(np_, block),), cfg, n_cb, chunk


def launch_cl_walk(tensors, x, size, alpha, beta, k, backward: bool) -> None:
    """relu_lrn forward (tensors x, y) or backward (x, dy, dx), channels_last."""
    n, c, h, w = x.shape
    grid, cfg, n_cb, chunk = _cl_plan(n, c, h, w, size, float(beta), _cl_vec(c, tensors), backward,
                                      _CL_THREADS)
    launch("relu_lrn_bwd" if backward else "relu_lrn_fwd",
           _relu_lrn_cl_bwd_kernel if backward else _relu_lrn_cl_fwd_kernel, grid,
           (*tensors, c, n * h * w, n_cb, chunk, alpha / size, k), cfg, x.device, TINY=tiny_s(alpha, k))


def _channel_window_sum(t: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """out[:, c] = sum of t[:, c - before .. c + after] along channels, zero outside."""
    padded = torch.nn.functional.pad(t, (0, 0, 0, 0, before, after))
    out = torch.zeros_like(t)
    for j in range(before + after + 1):
        out += padded[:, j:j + t.shape[1]]
    return out


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def lrn_forward_torch(x, size, alpha, beta, k):
    """The CPU path: the reference op, computed in float32 for half-precision inputs (as the kernel
    does; PyTorch's CPU avg_pool3d has no bfloat16 kernel), rounded to x's dtype."""
    from . import reference
    return reference.relu_lrn(x.to(_compute_dtype(x.dtype)), size, alpha, beta, k).to(x.dtype)


def lrn_backward_torch(x, dy, size, alpha, beta, k):
    """The same backward as the kernel, in plain PyTorch (the CPU path), in float32 or float64."""
    x = x.to(_compute_dtype(x.dtype))
    dy = dy.to(x.dtype)
    lo = _lrn_window(size)
    hi = size - 1 - lo
    r = torch.relu(x)
    s = k + (alpha / size) * _channel_window_sum(r * r, lo, hi)
    t = dy * r * s.pow(-beta - 1.0)
    dr = dy * s.pow(-beta) - (2.0 * alpha / size * beta) * r * _channel_window_sum(t, hi, lo)
    return torch.where(x > 0, dr, torch.zeros_like(dr))


def _relu_lrn_forward(x, size, alpha, beta, k):
    fmt = memory_format(x)
    x = dense(x, fmt)
    y = torch.empty_like(x, memory_format=fmt)
    if x.numel() == 0:
        return y
    if not use_triton(x):
        return y.copy_(lrn_forward_torch(x, size, alpha, beta, k))
    if fmt == torch.contiguous_format and walk_fits(size):
        launch_walk_forward(x, y, size, alpha, beta, k)
    elif fmt == torch.channels_last and walk_fits(size):
        launch_cl_walk((x, y), x, size, alpha, beta, k, backward=False)
    else:
        _launch_tile(_relu_lrn_fwd_kernel, "relu_lrn_fwd", (x, y), x, fmt, size, alpha, beta, k)
    return y


def _relu_lrn_backward(dy, x, size, alpha, beta, k):
    check_same_device("relu_lrn", grad=dy, input=x)
    fmt = memory_format(x)
    x = dense(x, fmt)
    dy = dense(dy, fmt)
    dx = torch.empty_like(x, memory_format=fmt)
    if x.numel() == 0:
        return dx
    if not use_triton(x):
        return dx.copy_(lrn_backward_torch(x, dy, size, alpha, beta, k))
    if fmt == torch.contiguous_format and walk_fits(size):
        launch_walk_backward(x, dy, dx, size, alpha, beta, k)
    elif fmt == torch.channels_last and walk_fits(size):
        launch_cl_walk((x, dy, dx), x, size, alpha, beta, k, backward=True)
    else:
        _launch_tile(_relu_lrn_bwd_kernel, "relu_lrn_bwd", (x, dy, dx), x, fmt, size, alpha, beta, k)
    return dx


# ---------------------------------------------------------------------------------- registration


@torch.library.custom_op("alexnet_triton::relu_lrn", mutates_args=())
def relu_lrn_op(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    return _relu_lrn_forward(x, size, alpha, beta, k)


@relu_lrn_op.register_fake
def _(x, size, alpha, beta, k):
    return torch.empty_like(x, memory_format=memory_format(x))


@torch.library.custom_op("alexnet_triton::relu_lrn_backward", mutates_args=())
def relu_lrn_backward_op(dy: torch.Tensor, x: torch.Tensor, size: int, alpha: float, beta: float,
                         k: float) -> torch.Tensor:
    return _relu_lrn_backward(dy, x, size, alpha, beta, k)


@relu_lrn_backward_op.register_fake
def _(dy, x, size, alpha, beta, k):
    return torch.empty_like(x, memory_format=memory_format(x))


def _setup_context(ctx, inputs, output):
    x, size, alpha, beta, k = inputs
    ctx.save_for_backward(x)
    ctx.args = (size, alpha, beta, k)


def _backward(ctx, dy):
    (x,) = ctx.saved_tensors
    return _relu_lrn_bwd(dy, x, *ctx.args), None, None, None, None


relu_lrn_op.register_autograd(_backward, setup_context=_setup_context)
_relu_lrn_bwd = fast_path(relu_lrn_backward_op, _relu_lrn_backward)
_relu_lrn = fast_path(relu_lrn_op,
                      eager_autograd("ReluLRN", _relu_lrn_forward, _setup_context, _backward).apply)


# ----------------------------------------------------------------------------------------- public


def relu_lrn(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
             k: float = 2.0) -> torch.Tensor:
    """``F.local_response_norm(F.relu(x), size, alpha, beta, k)`` in one kernel each way.

    alpha is divided by ``size`` (PyTorch's, Caffe's and cuda-convnet's convention)."""
    check_tensor("relu_lrn", x, ndim=4)
    check_lrn_args("relu_lrn", size, alpha, beta, k)
    return _relu_lrn(x, size, float(alpha), float(beta), float(k))
