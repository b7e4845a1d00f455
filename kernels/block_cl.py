"""The fused ReLU + LRN + max-pool block (``kernels.relu_lrn_max_pool2d``) for channels_last inputs.

Channels are the contiguous axis: a thread owns G consecutive channels of a pixel (16-byte vector loads
where C and the tensor's address allow: neighbouring threads read neighbouring addresses) and reads the
halo channels around them from cache. The LRN window sums run over the channels oldest first with
``_ring_sumsq`` and the power is ``_pow_neg``, as in relu_lrn's kernels, so the values are bit for bit
relu_lrn's. The pool geometry is constexpr; the integer divisions happen once per thread. The last channel
group (and the forward's last column patch, the backward's last walk) overlaps its neighbour instead of
running past C or the plane: the same values stored twice, no masks.

- Forward (windows inside the plane: no padding, at most 3 x 3): a thread owns TOW pooled columns of G
  channels and walks down a block of pooled rows (the grid's second axis). Each input row is reduced at
  once to its row maxima (value, kw) per window column; the last KH - SH rows' maxima are carried to the
  next pooled row, so every LRN value of the thread's columns is computed once per walk. Pooled
  separably as block.py's patch walk: PyTorch's rule (a value wins when v > best or v is NaN) along each
  row, then down the rows' winners: the first maximum in row-major order, or the last NaN. The values
  compete rounded to the output dtype, as relu_lrn stores them.
- Backward: a thread owns an SH x SW block of input pixels and G channels and walks down the block rows.
  The pooled gradient of the (at most 2 x 2) windows that can hold a pixel of the block is routed
  through the argmax with constant window positions (as lrn.py's ``_route``), summed in PyTorch's order
  (window rows shared with the previous block are routed there), for the G + SIZE - 1 channels whose
  t_c' reach the thread's dx (the halo's t recomputed); then lrn.py's backward formula.
"""

from __future__ import annotations

import functools

import torch

from ._common import INTERPRET, Config, capability, cdiv, launch, tl, triton
from ._pooling import block_windows

if triton is not None:
    from ._jit import (
        _acc_zeros,
        _ld_idx,
        _ldv,
        _lrn_dx,
        _lrn_ta,
        _lrn_y,
        _ptx,
        _put,
        _relu_up,
        _ring_sumsq,
        _rounded,
        _st_if,
        _st_row,
        _upcast,
    )

    @triton.jit
    def _halo(c0, C, L: tl.constexpr, R: tl.constexpr, G: tl.constexpr, VEC: tl.constexpr):
        """Offsets from c0 of the VEC-vectors holding channels c0 - L .. c0 - 1 and c0 + G .. c0 + G + R - 1,
        and whether each lies in [0, C) (all or none of a vector's channels: C and c0 are multiples of
        VEC); a vector outside is read at offset 0 instead."""
        NL: tl.constexpr = (L + VEC - 1) // VEC
        NR: tl.constexpr = (R + VEC - 1) // VEC
        offs = ()
        oks = ()
        for m in tl.static_range(NL + NR):
            if m < NL:
                o = (m - NL) * VEC
            else:
                o = G + (m - NL) * VEC
            ok = (c0 + o >= 0) & (c0 + o + VEC <= C)
            offs = offs + (tl.where(ok, o, 0),)
            oks = oks + (ok,)
        return offs, oks

    @triton.jit
    def _span(p, offs, oks, L: tl.constexpr, R: tl.constexpr, G: tl.constexpr, VEC: tl.constexpr,
              RELU: tl.constexpr):
        """Channels c0 - L .. c0 + G + R - 1 at one pixel (p: its channel-c0 address; offs, oks from _halo),
        upcast (and relu'd with RELU); channels outside [0, C) read as 0 (PyTorch's zero padding)."""
        NL: tl.constexpr = (L + VEC - 1) // VEC
        NR: tl.constexpr = (R + VEC - 1) // VEC
        vals = ()
        for m in tl.static_range(NL + G // VEC + NR):
            if m < NL:
                v = _ldv(p + offs[m], VEC)
            elif m < NL + G // VEC:
                v = _ldv(p + (m - NL) * VEC, VEC)
            else:
                v = _ldv(p + offs[m - G // VEC], VEC)
            for e in tl.static_range(VEC):
                if RELU:
                    u = _relu_up(v[e])
                else:
                    u = _upcast(v[e])
                if m < NL:
                    u = tl.where(oks[m], u, 0.0)
                elif m >= NL + G // VEC:
                    u = tl.where(oks[m - G // VEC], u, 0.0)
                vals = vals + (u,)
        return vals[NL * VEC - L:NL * VEC + G + R]

    @triton.jit
    def _row_maxima(row, C, hoffs, hoks, alpha_n, k, zero_i, y_ptr, G: tl.constexpr, SIZE: tl.constexpr,
                    BETA: tl.constexpr, TINY: tl.constexpr, KW: tl.constexpr, SW: tl.constexpr,
                    TOW: tl.constexpr,
                    VEC: tl.constexpr):
        """The LRN values of one input row's V = (TOW - 1) * SW + KW pixels (row: the first one's channel-c0
        address), rounded to the output dtype, reduced to each window column's maximum: (bests, args),
        flat tuples indexed b * G + j (window column b, channel c0 + j), args the winners' kw."""
        LO: tl.constexpr = SIZE // 2
        HI: tl.constexpr = SIZE - 1 - LO
        V: tl.constexpr = (TOW - 1) * SW + KW
        cols = ()
        for v in tl.static_range(V):
            r = _span(row + v * C, hoffs, hoks, LO, HI, G, VEC, True)
            ys = ()
            for j in tl.static_range(G):
                ys = ys + (_lrn_y(r[j + LO], _ring_sumsq(r[j:j + SIZE], SIZE), alpha_n, k, BETA, TINY),)
            # rounded to the output dtype, as relu_lrn's output is, before they compete
            vals = ()
            for j in tl.static_range(G // 2):
                vals = vals + _rounded(ys[2 * j], ys[2 * j + 1], y_ptr)
            if G % 2 == 1:
                vals = vals + (_upcast(ys[G - 1].to(y_ptr.dtype.element_ty)),)
            cols = cols + (vals,)
        bests = ()
        args = ()
        for b in tl.static_range(TOW):
            for j in tl.static_range(G):
                best = cols[b * SW][j]
                arg = zero_i
                for kw in tl.static_range(1, KW):
                    v = cols[b * SW + kw][j]
                    take = (v > best) | (v != v)
                    best = tl.where(take, v, best)
                    arg = tl.where(take, kw, arg)
                bests = bests + (best,)
                args = args + (arg,)
        return bests, args

    @triton.jit
    def _cl_fwd_kernel(
        x_ptr,  # *T (N, C, H, W) input, channels_last dense
        y_ptr,  # *T (N, C, OH, OW) pooled output, channels_last dense
        am_ptr,  # *u8|i32 (N, C, OH, OW) argmax inside the window, kh * KW + kw, channels_last
        C, H, W, OH, OW,
        n_cg, n_pc, n_q, n_rows,  # channel groups, column patches, threads per row block, rows per walk
        alpha_n, k,
        SIZE: tl.constexpr, BETA: tl.constexpr, TINY: tl.constexpr,
        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
        TOW: tl.constexpr, G: tl.constexpr, VEC: tl.constexpr, BLOCK: tl.constexpr,
    ):
        LO: tl.constexpr = SIZE // 2
        HI: tl.constexpr = SIZE - 1 - LO
        OV: tl.constexpr = KH - SH  # input rows shared by consecutive pooled rows (KH >= SH)
        # one work item per thread: channel groups vary fastest (neighbouring addresses), then column
        # patches, images; the last program's surplus threads redo the last item. The grid's second axis
        # is the walk's block of n_rows pooled rows (the last one shorter): a trip count per program
        q = tl.minimum(tl.program_id(0) * BLOCK + tl.arange(0, BLOCK), n_q - 1)
        t = q // n_cg
        cg = q - t * n_cg
        n = t // n_pc
        pc = t - n * n_pc
        oh0 = tl.program_id(1) * n_rows
        n_here = tl.minimum(n_rows, OH - oh0)
        # the last group and column patch overlap their neighbours instead of running past C or the plane
        # (the same values stored twice): no load or store needs a mask
        c0 = tl.minimum(cg * G, C - G)
        ow0 = tl.minimum(pc * TOW, OW - TOW)
        WC = W * C
        OWC = OW * C
        x_img = x_ptr + (n.to(tl.int64) * H * WC + (ow0 * SW * C + c0))
        o_off = n.to(tl.int64) * OH * OWC + (ow0 * C + c0)
        y_img = y_ptr + o_off
        am_img = am_ptr + o_off
        zero_i = tl.zeros_like(q)
        hoffs, hoks = _halo(c0, C, LO, HI, G, VEC)  # the halo channels' vectors
        consts = (C, hoffs, hoks, alpha_n, k, zero_i, y_ptr)
        # the first pooled row's first OV input rows
        car_b = ()
        car_a = ()
        for u in tl.static_range(OV):
            b_, a_ = _row_maxima(x_img + (oh0 * SH + u).to(tl.int64) * WC, *consts, G, SIZE, BETA, TINY,
                                 KW, SW,
                                 TOW, VEC)
            car_b = car_b + (b_,)
            car_a = car_a + (a_,)
        for i in range(n_here):
            oh = oh0 + i
            rows_b = car_b
            rows_a = car_a
            for u in tl.static_range(OV, KH):
                b_, a_ = _row_maxima(x_img + (oh * SH + u).to(tl.int64) * WC, *consts, G, SIZE, BETA,
                                     TINY, KW, SW,
                                     TOW, VEC)
                rows_b = rows_b + (b_,)
                rows_a = rows_a + (a_,)
            o_row = oh.to(tl.int64) * OWC
            for b in tl.static_range(TOW):
                ys = ()
                ams = ()
                for j in tl.static_range(G):
                    best = rows_b[0][b * G + j]
                    arg = rows_a[0][b * G + j]
                    for kh in tl.static_range(1, KH):
                        v = rows_b[kh][b * G + j]
                        take = (v > best) | (v != v)
                        best = tl.where(take, v, best)
                        arg = tl.where(take, rows_a[kh][b * G + j] + kh * KW, arg)
                    ys = ys + (best.to(y_ptr.dtype.element_ty),)
                    ams = ams + (arg.to(am_ptr.dtype.element_ty),)
                _st_row(y_img + o_row + b * C, ys, G)
                _st_row(am_img + o_row + b * C, ams, G)
            car_b = rows_b[SH:]
            car_a = rows_a[SH:]

    @triton.jit
    def _add_if(g, am, K: tl.constexpr, d):
        """g + d where am == K, else g: float32 on an NVIDIA GPU, one compare and a predicated add (a select
        of g + d would cost a third instruction). $0 is written before $2..$4 are read: an early-clobber
        output (=&r), never given an input's register."""
        if g.dtype == tl.float32 and _ptx(0):
            return tl.inline_asm_elementwise(
                "mov.b32 $0, $1;\n\t{ .reg .pred p; setp.eq.s32 p, $2, $3; @p add.f32 $0, $1, $4; }",
                "=&r,r,r,r,r", [g, am, tl.zeros_like(am) + K, d], dtype=tl.float32, is_pure=True, pack=1)
        else:
            return tl.where(am == K, g + d, g)

    @triton.jit
    def _window_row(oh, o_img, OH, OWC, wcol_off, wcol_ok, NWW: tl.constexpr):
        """Pooled row oh's windows in the block's window columns: their channel-c0 offsets (clamped into
        the pooled plane) and whether each lies inside it."""
        w_row = ()
        wok = ()
        for b in tl.static_range(NWW):
            w_row = w_row + (o_img + tl.minimum(tl.maximum(oh, 0), OH - 1).to(tl.int64) * OWC + wcol_off[b],)
            wok = wok + (wcol_ok[b] & (oh >= 0) & (oh < OH),)
        return w_row, wok

    @triton.jit
    def _route_row(gs, w_row, wok, toffs, toks, doffs, doks, am_ptr, dy_ptr, A: tl.constexpr,
                   G: tl.constexpr, SIZE: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                   SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                   OH_LO: tl.constexpr, OW_LO: tl.constexpr, NWW: tl.constexpr, VEC: tl.constexpr):
        """Add the pooled gradient of one row of windows (w_row[b]: window (row, b)'s channel-c0 offset,
        wok[b]: inside the pooled plane) to gs[i][p] (channel c0 - HI + i, pixel p of a block for which the
        row is window row A) where the pixel is the window's argmax. toffs, toks: the halo channels'
        offsets (_halo with VEC = 1), doffs, doks: their vectors'."""
        LO: tl.constexpr = SIZE // 2
        HI: tl.constexpr = SIZE - 1 - LO
        ds = ()
        for b in tl.static_range(NWW):
            ds = ds + (_span(dy_ptr + w_row[b], doffs, doks, HI, LO, G, VEC, False),)
        out = ()
        for i in tl.static_range(G + SIZE - 1):
            g_p = gs[i]
            for b in tl.static_range(NWW):
                if i < HI:  # a halo channel: its argmax read at a clamped channel, outside [0, C) unused
                    am = _ld_idx(am_ptr + w_row[b] + toffs[i])
                    m = wok[b] & toks[i]
                elif i >= G + HI:
                    am = _ld_idx(am_ptr + w_row[b] + toffs[i - G])
                    m = wok[b] & toks[i - G]
                else:
                    am = _ld_idx(am_ptr + w_row[b] + (i - HI))
                    m = wok[b]
                d = ds[b][i]
                am = tl.where(m, am, -1)  # no position: the window lies outside the plane or C
                # the pixel's position in window (A, b) is a constant: one compare and a predicated add per
                # pair that can meet
                for u in tl.static_range(SH):
                    for v in tl.static_range(SW):
                        kh = u + PH - (OH_LO + A) * SH
                        kw = v + PW - (OW_LO + b) * SW
                        if kh >= 0 and kh < KH and kw >= 0 and kw < KW:
                            g_p = _put(g_p, u * SW + v, _add_if(g_p[u * SW + v], am, kh * KW + kw, d))
            out = out + (g_p,)
        return out

    @triton.jit
    def _cl_bwd_kernel(
        x_ptr,  # *T (N, C, H, W) the forward's input, channels_last dense
        dy_ptr,  # *T (N, C, OH, OW) gradient of the pooled output, channels_last dense
        am_ptr,  # *u8|i32 (N, C, OH, OW) the forward's argmax, channels_last
        dx_ptr,  # *T (N, C, H, W) gradient of the input, channels_last dense
        C, H, W, OH, OW,
        n_cg, n_bc, n_pr, n_q, n_blocks,  # channel groups, block columns, walks per column, threads, blocks
        alpha_n, k,
        SIZE: tl.constexpr, BETA: tl.constexpr, TINY: tl.constexpr,
        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
        PH: tl.constexpr, PW: tl.constexpr,
        OH_LO: tl.constexpr, NWH: tl.constexpr,  # windows holding a block's rows: bh + OH_LO + [0, NWH)
        OW_LO: tl.constexpr, NWW: tl.constexpr,
        G: tl.constexpr, VEC: tl.constexpr, BLOCK: tl.constexpr,
    ):
        LO: tl.constexpr = SIZE // 2
        HI: tl.constexpr = SIZE - 1 - LO
        NT: tl.constexpr = G + SIZE - 1  # channels c0 - HI + i whose t reach the thread's dx
        NPIX: tl.constexpr = SH * SW
        q = tl.minimum(tl.program_id(0) * BLOCK + tl.arange(0, BLOCK), n_q - 1)
        t = q // n_cg
        cg = q - t * n_cg
        t2 = t // n_bc
        bw = t - t2 * n_bc
        n = t2 // n_pr
        pr = t2 - n * n_pr
        c0 = tl.minimum(cg * G, C - G)
        # a walk of n_blocks block rows down block column bw; the last walk overlaps its neighbour
        bh0 = tl.minimum(pr * n_blocks, tl.cdiv(H, SH) - n_blocks)
        zero = _acc_zeros(q, x_ptr)
        coef = (zero + alpha_n) * (2.0 * BETA)
        n64 = n.to(tl.int64)
        WC = W * C
        OWC = OW * C
        x_img = n64 * H * WC + c0
        o_img = n64 * OH * OWC + c0
        # the block's pixel columns and its windows' columns (clamped into the plane)
        col_off = ()
        col_ok = ()
        for v in tl.static_range(SW):
            iw = bw * SW + v
            col_off = col_off + (tl.minimum(iw, W - 1) * C,)
            col_ok = col_ok + (iw < W,)
        wcol_off = ()
        wcol_ok = ()
        for b in tl.static_range(NWW):
            ow = bw + (OW_LO + b)
            wcol_off = wcol_off + (tl.minimum(tl.maximum(ow, 0), OW - 1) * C,)
            wcol_ok = wcol_ok + ((ow >= 0) & (ow < OW),)
        # the halo: x's channels c0 - (SIZE - 1) .. c0 - 1 and c0 + G .. c0 + G + SIZE - 2 (vectors), the
        # t channels c0 - HI .. c0 - 1 and c0 + G .. c0 + G + LO - 1 (vectors, and one by one)
        xoffs, xoks = _halo(c0, C, SIZE - 1, SIZE - 1, G, VEC)
        doffs, doks = _halo(c0, C, HI, LO, G, VEC)
        toffs, toks = _halo(c0, C, HI, LO, G, 1)
        rargs = (toffs, toks, doffs, doks, am_ptr, dy_ptr)
        # gs[i][p]: the gradient routed to pixel p, channel c0 - HI + i. With two window rows per block
        # (NWH = 2) a block's first window row is its predecessor's second: routed there into `carry`
        # (window row 0 of the next block; rows are added in order, as PyTorch's gather sums them)
        empty = ((zero,) * NPIX,) * NT
        carry = empty
        if NWH == 2:
            w_row, wok = _window_row(bh0 + OH_LO, o_img, OH, OWC, wcol_off, wcol_ok, NWW)
            carry = _route_row(empty, w_row, wok, *rargs, 0, G, SIZE, KH, KW, SH, SW, PH, PW, OH_LO, OW_LO,
                               NWW, VEC)
        for it in range(n_blocks):
            bh = bh0 + it
            # the block's last window row
            w_row, wok = _window_row(bh + (OH_LO + NWH - 1), o_img, OH, OWC, wcol_off, wcol_ok, NWW)
            gs = _route_row(carry, w_row, wok, *rargs, NWH - 1, G, SIZE, KH, KW, SH, SW, PH, PW, OH_LO,
                            OW_LO, NWW, VEC)
            if NWH == 2:
                carry = _route_row(empty, w_row, wok, *rargs, 0, G, SIZE, KH, KW, SH, SW, PH, PW, OH_LO,
                                   OW_LO, NWW, VEC)
            for u in tl.static_range(SH):
                ih = bh * SH + u
                row = x_img + tl.minimum(ih, H - 1).to(tl.int64) * WC
                for v in tl.static_range(SW):
                    p_off = row + col_off[v]
                    p_ok = col_ok[v] & (ih < H)
                    r = _span(x_ptr + p_off, xoffs, xoks, SIZE - 1, SIZE - 1, G, VEC, True)
                    ts = ()
                    as_ = ()
                    for i in tl.static_range(NT):
                        ring = r[i:i + SIZE]
                        t_i, a_i = _lrn_ta(ring, gs[i][u * SW + v], alpha_n, k, SIZE, BETA, TINY)
                        # channels outside [0, C) have no t (not even NaN from s = 0)
                        if i < HI:
                            t_i = tl.where(toks[i], t_i, 0.0)
                        elif i >= G + HI:
                            t_i = tl.where(toks[i - G], t_i, 0.0)
                        ts = ts + (t_i,)
                        as_ = as_ + (a_i,)
                    for j in tl.static_range(G):
                        dx = _lrn_dx(r[j + SIZE - 1], as_[j + HI], ts[j:j + SIZE], coef, SIZE)
                        _st_if(dx_ptr + p_off + j, dx.to(dx_ptr.dtype.element_ty), p_ok)

    if INTERPRET:
        # plain Python under the interpreter (see _jit.py): no inline PTX, and no re-patching per call
        def _add_if(g, am, K, d):
            return tl.where(am == K, g + d, g)

        _halo = _halo.fn
        _span = _span.fn
        _row_maxima = _row_maxima.fn
        _window_row = _window_row.fn
        _route_row = _route_row.fn


# ------------------------------------------------------------------------------------ launchers

_ROWS = 8  # pooled rows a forward thread walks, at most
_TOW = 2  # pooled columns a forward thread owns, at most
_G = 8  # channels a thread owns
_BLOCK = 128


def _vec(x, c: int, g: int) -> int:
    """Channels per vector load: 16 bytes where C, G and the tensor's address allow, else 1."""
    vec = 16 // x.element_size()
    return vec if c % vec == 0 and g % vec == 0 and x.data_ptr() % 16 == 0 else 1


def _group(c: int, most: int = _G) -> int:
    """Channels per thread: ``most``, or the largest power of two that C holds."""
    g = most
    while g > c:
        g //= 2
    return g


def forward_fits(x, pool, size) -> bool:
    """Whether the channels_last forward applies: float32/16/bfloat16, no padding, KH >= SH and
    KW >= SW (the walk carries shared rows; every column a window reads is computed), windows of at most
    3 x 3 and SIZE <= 9 (5 x 5 windows spill in float32: a thread holds KH rows of row maxima)."""
    (kh, kw), (sh, sw), (ph, pw) = pool
    return (x.dtype != torch.float64 and ph == 0 and pw == 0 and sh <= kh <= 3 and sw <= kw <= 3
            and size <= 9)


def backward_fits(x, pool, size) -> bool:
    """Whether the channels_last backward applies: float32/16/bfloat16, SIZE <= 7, blocks of at most 4
    pixels, at most 2 x 2 windows holding a block's pixels (padding allowed)."""
    (kh, kw), (sh, sw), (ph, pw) = pool
    return (x.dtype != torch.float64 and size <= 7 and sh * sw <= 4 and block_windows(kh, sh, ph)[1] <= 2
            and block_windows(kw, sw, pw)[1] <= 2)


@functools.lru_cache(maxsize=256)
def _fwd_plan(n, c, oh, ow, pool, size, beta, half, cap):
    (kh, kw), (sh, sw), _ = pool
    # windows wider than AlexNet's: half the channels a thread (8 float32 channels of SIZE 9 spill 24
    # bytes on sm_100)
    g = _group(c, _G if size <= 5 else _G // 2)
    # and for 16-bit values before sm_80 (emulated conversions) a register cap (see Config): left to
    # choose, ptxas aims the bfloat16 build without inline asm at 128 registers on sm_75 and spills 24
    # bytes at SIZE 9. Not elsewhere: given a cap, ptxas fills it (float32 at SIZE 9: 140 -> 168
    # registers, and 8-40 bytes spilled on sm_90a/sm_100 in that build)
    registers = 168 if size > 5 and half and 0 < cap < 80 else None
    # pooled columns per thread: the fewest input columns computed in all (the last patch overlaps)
    tow = min(range(1, min(_TOW, ow) + 1), key=lambda t: (cdiv(ow, t) * ((t - 1) * sw + kw), t))
    # walks of at most _ROWS pooled rows, as even as they come (each costs KH - SH rows of prologue)
    n_pr = cdiv(oh, _ROWS)
    rows = cdiv(oh, n_pr)
    n_cg, n_pc = cdiv(c, g), cdiv(ow, tow)
    n_q = n * n_pc * n_cg
    cfg = Config(dict(SIZE=size, BETA=beta, KH=kh, KW=kw, SH=sh, SW=sw, TOW=tow, G=g, BLOCK=_BLOCK),
                 num_warps=_BLOCK // 32, max_registers=registers)
    return (cdiv(n_q, _BLOCK), cdiv(oh, rows)), cfg, (n_cg, n_pc, n_q, rows)


def launch_forward(x, y, am, pool, size, alpha, beta, k) -> bool:
    """The channels_last forward, if it applies (see forward_fits): True when launched."""
    from .lrn import tiny_s

    n, c, h, w = x.shape
    oh, ow = y.shape[2:]
    (kh, kw), (sh, sw), _ = pool
    if not forward_fits(x, pool, size) or (oh - 1) * sh + kh > h or (ow - 1) * sw + kw > w:
        return False
    grid, cfg, (n_cg, n_pc, n_q, rows) = _fwd_plan(n, c, oh, ow, pool, size, float(beta),
                                                   x.element_size() == 2, capability(x))
    launch("relu_lrn_max_pool2d_fwd", _cl_fwd_kernel, grid,
           (x, y, am, c, h, w, oh, ow, n_cg, n_pc, n_q, rows, alpha / size, k), cfg, x.device,
           VEC=_vec(x, c, cfg.constexprs["G"]), TINY=tiny_s(alpha, k))
    return True


@functools.lru_cache(maxsize=256)
def _bwd_plan(n, c, h, w, pool, size, beta):
    (kh, kw), (sh, sw), (ph, pw) = pool
    g = _group(c)
    (oh_lo, nwh), (ow_lo, nww) = block_windows(kh, sh, ph), block_windows(kw, sw, pw)
    n_br = cdiv(h, sh)
    # block rows per walk (at most _ROWS): the fewest blocks in all, a walk's first window row costing
    # about half a block
    blocks = min(range(1, min(n_br, _ROWS) + 1),
                 key=lambda b: (cdiv(n_br, b) * (b + 0.5 * (nwh - 1) + 0.5), -b))
    n_cg, n_bc, n_pr = cdiv(c, g), cdiv(w, sw), cdiv(n_br, blocks)
    n_q = n * n_pr * n_bc * n_cg
    cfg = Config(dict(SIZE=size, BETA=beta, KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw, OH_LO=oh_lo, NWH=nwh,
                      OW_LO=ow_lo, NWW=nww, G=g, BLOCK=_BLOCK), num_warps=_BLOCK // 32)
    return (cdiv(n_q, _BLOCK),), cfg, (n_cg, n_bc, n_pr, n_q, blocks)


def launch_backward(x, dy, am, dx, pool, size, alpha, beta, k) -> bool:
    """The channels_last backward, if it applies (see backward_fits): True when launched."""
    from .lrn import tiny_s

    if not backward_fits(x, pool, size):
        return False
    n, c, h, w = x.shape
    oh, ow = dy.shape[2:]
    grid, cfg, (n_cg, n_bc, n_pr, n_q, blocks) = _bwd_plan(n, c, h, w, pool, size, float(beta))
    launch("relu_lrn_max_pool2d_bwd", _cl_bwd_kernel, grid,
           (x, dy, am, dx, c, h, w, oh, ow, n_cg, n_bc, n_pr, n_q, blocks, alpha / size, k), cfg, x.device,
           VEC=min(_vec(x, c, cfg.constexprs["G"]), _vec(dy, c, cfg.constexprs["G"])),
           TINY=tiny_s(alpha, k))
    return True
