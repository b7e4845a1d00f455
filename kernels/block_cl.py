"""The fused ReLU + LRN + max-pool block (``kernels.relu_lrn_max_pool2d``) for channels_last inputs.

Channels are the contiguous axis: a thread owns G consecutive channels (one load per channel and pixel,
neighbouring threads at neighbouring addresses) and reads the SIZE - 1 halo channels around them from
cache. The LRN window sums run over the channels oldest first with ``_ring_sumsq`` and the power is
``_pow_neg``, as in relu_lrn's kernels, so the values are bit for bit relu_lrn's. The pool geometry is
constexpr; no integer division past the program's start.

- Forward (windows inside the plane: no padding): a thread owns TOW pooled columns of G channels and
  walks down ROWS pooled rows. Each input row is reduced at once to its row maxima (value, kw) per
  window column; the last KH - SH rows' maxima are carried to the next pooled row, so every LRN value
  of the thread's columns is computed once per walk. Pooled separably as block.py's patch walk: PyTorch's
  rule (a value wins when v > best or v is NaN) along each row, then down the rows' winners.
- Backward: a thread owns an SH x SW block of input pixels and G channels; the pooled gradient of the
  NWH x NWW windows that can hold a pixel of the block is routed through the argmax (lrn.py's
  ``_route``), for the G + SIZE - 1 channels whose t_c' reach the thread's dx (the halo's t recomputed).
"""

from __future__ import annotations

import functools

import torch

from ._common import INTERPRET, Config, cdiv, launch, tl, triton

if triton is not None:
    from ._jit import _acc_zeros, _ld, _pow_neg, _pow_neg2, _relu_up, _ring_sum, _ring_sumsq, _st, _upcast
    from .lrn import _route

    @triton.jit
    def _ld_int(ptrs):
        """An argmax element (uint8 or int32) as int32, one inline PTX load (see _jit._ld)."""
        if ptrs.dtype.element_ty == tl.uint8:
            return tl.inline_asm_elementwise("ld.global.u8 $0, [$1];", "=r,l", [ptrs], dtype=tl.int32,
                                             is_pure=True, pack=1)
        else:
            return tl.inline_asm_elementwise("ld.global.b32 $0, [$1];", "=r,l", [ptrs], dtype=tl.int32,
                                             is_pure=True, pack=1)

    @triton.jit
    def _st_if(ptrs, v, ok):
        """tl.store(ptrs, v, mask=ok) for a 16- or 32-bit element, as predicated inline PTX."""
        addr = ptrs.to(tl.int64)
        flag = ok.to(tl.int32)
        if v.dtype.primitive_bitwidth == 32:
            tl.inline_asm_elementwise(
                "{ .reg .pred p; setp.ne.b32 p, $3, 0; @p st.global.b32 [$1], $2; }\n\tmov.u32 $0, 0;",
                "=r,l,r,r", [addr, v, flag], dtype=tl.int32, is_pure=False, pack=1)
        else:
            tl.inline_asm_elementwise(
                "{ .reg .pred p; setp.ne.b32 p, $3, 0; @p st.global.b16 [$1], $2; }\n\tmov.u32 $0, 0;",
                "=r,l,h,r", [addr, v, flag], dtype=tl.int32, is_pure=False, pack=1)

    @triton.jit
    def _channels(p, hoffs, hoks, G: tl.constexpr, LO: tl.constexpr, HI: tl.constexpr):
        """relu(x) of channels c0 - LO .. c0 + G + HI - 1 at one pixel (p: its channel-c0 address). The
        halo channels are read at p + hoffs[h] (0 for a channel outside [0, C), whose value is zeroed:
        PyTorch's zero padding)."""
        r = ()
        for i in tl.static_range(G + LO + HI):
            if i < LO:
                r = r + (tl.where(hoks[i], _relu_up(_ld(p + hoffs[i])), 0.0),)
            elif i >= LO + G:
                r = r + (tl.where(hoks[i - G], _relu_up(_ld(p + hoffs[i - G])), 0.0),)
            else:
                r = r + (_relu_up(_ld(p + (i - LO))),)
        return r

    @triton.jit
    def _row_maxima(row, C, hoffs, hoks, alpha_n, k, zero_i, y_ptr, G: tl.constexpr, SIZE: tl.constexpr,
                    BETA: tl.constexpr, KW: tl.constexpr, SW: tl.constexpr, TOW: tl.constexpr):
        """The LRN values of one input row's V = (TOW - 1) * SW + KW pixels (row: the first one's channel-c0
        address), rounded to the output dtype, reduced to each window column's maximum: (bests, args),
        flat tuples indexed b * G + j (window column b, channel c0 + j), args the winners' kw."""
        LO: tl.constexpr = SIZE // 2
        HI: tl.constexpr = SIZE - 1 - LO
        V: tl.constexpr = (TOW - 1) * SW + KW
        cols = ()
        for v in tl.static_range(V):
            r = _channels(row + v * C, hoffs, hoks, G, LO, HI)
            vals = ()
            for j in tl.static_range(G):
                y = r[j + LO] * _pow_neg(k + alpha_n * _ring_sumsq(r[j:j + SIZE], SIZE), BETA)
                # rounded to the output dtype, as relu_lrn's output is, before it competes
                vals = vals + (_upcast(y.to(y_ptr.dtype.element_ty)),)
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
        n_cg, n_pc, n_pr, n_q, n_rows,  # channel groups, column patches, row blocks, threads in all, rows
        alpha_n, k,
        SIZE: tl.constexpr, BETA: tl.constexpr,
        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
        TOW: tl.constexpr, G: tl.constexpr, BLOCK: tl.constexpr,
    ):
        LO: tl.constexpr = SIZE // 2
        HI: tl.constexpr = SIZE - 1 - LO
        OV: tl.constexpr = KH - SH  # input rows shared by consecutive pooled rows (KH >= SH)
        # one work item per thread: channel groups vary fastest (neighbouring addresses), then column
        # patches, row blocks, images; the last program's surplus threads redo the last item
        q = tl.minimum(tl.program_id(0) * BLOCK + tl.arange(0, BLOCK), n_q - 1)
        t = q // n_cg
        cg = q - t * n_cg
        t2 = t // n_pc
        pc = t - t2 * n_pc
        n = t2 // n_pr
        pr = t2 - n * n_pr
        # the last group, column patch and row block overlap their neighbours instead of running past
        # C or the plane (the same values stored twice): no load or store needs a mask
        c0 = tl.minimum(cg * G, C - G)
        ow0 = tl.minimum(pc * TOW, OW - TOW)
        oh0 = tl.minimum(pr * n_rows, OH - n_rows)
        WC = W * C
        OWC = OW * C
        x_img = x_ptr + (n.to(tl.int64) * H * WC + (ow0 * SW * C + c0))
        o_off = n.to(tl.int64) * OH * OWC + (ow0 * C + c0)
        y_img = y_ptr + o_off
        am_img = am_ptr + o_off
        zero_i = tl.zeros_like(q)
        # halo channels c0 - LO .. c0 - 1 and c0 + G .. c0 + G + HI - 1: offsets from c0 (0 outside [0, C))
        hoffs = ()
        hoks = ()
        for h in tl.static_range(LO + HI):
            if h < LO:
                jh = h - LO
            else:
                jh = G + h - LO
            ok = (c0 + jh >= 0) & (c0 + jh < C)
            hoffs = hoffs + (tl.where(ok, jh, 0),)
            hoks = hoks + (ok,)
        consts = (C, hoffs, hoks, alpha_n, k, zero_i, y_ptr)
        # the first pooled row's first OV input rows
        car_b = ()
        car_a = ()
        for u in tl.static_range(OV):
            b_, a_ = _row_maxima(x_img + (oh0 * SH + u).to(tl.int64) * WC, *consts, G, SIZE, BETA, KW, SW,
                                 TOW)
            car_b = car_b + (b_,)
            car_a = car_a + (a_,)
        for i in range(n_rows):
            oh = oh0 + i
            rows_b = car_b
            rows_a = car_a
            for u in tl.static_range(OV, KH):
                b_, a_ = _row_maxima(x_img + (oh * SH + u).to(tl.int64) * WC, *consts, G, SIZE, BETA, KW, SW,
                                     TOW)
                rows_b = rows_b + (b_,)
                rows_a = rows_a + (a_,)
            o_row = oh.to(tl.int64) * OWC
            for b in tl.static_range(TOW):
                for j in tl.static_range(G):
                    best = rows_b[0][b * G + j]
                    arg = rows_a[0][b * G + j]
                    for kh in tl.static_range(1, KH):
                        v = rows_b[kh][b * G + j]
                        take = (v > best) | (v != v)
                        best = tl.where(take, v, best)
                        arg = tl.where(take, rows_a[kh][b * G + j] + kh * KW, arg)
                    _st(y_img + o_row + (b * C + j), best.to(y_ptr.dtype.element_ty))
                    _st(am_img + o_row + (b * C + j), arg.to(am_ptr.dtype.element_ty))
            car_b = rows_b[SH:]
            car_a = rows_a[SH:]

    @triton.jit
    def _cl_bwd_kernel(
        x_ptr,  # *T (N, C, H, W) the forward's input, channels_last dense
        dy_ptr,  # *T (N, C, OH, OW) gradient of the pooled output, channels_last dense
        am_ptr,  # *u8|i32 (N, C, OH, OW) the forward's argmax, channels_last
        dx_ptr,  # *T (N, C, H, W) gradient of the input, channels_last dense
        C, H, W, OH, OW,
        n_cg, n_bc, n_br, n_q,  # channel groups, pixel-block columns and rows, threads in all
        alpha_n, k,
        SIZE: tl.constexpr, BETA: tl.constexpr,
        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
        PH: tl.constexpr, PW: tl.constexpr,
        OH_LO: tl.constexpr, NWH: tl.constexpr,  # windows holding a block's rows: bh + OH_LO + [0, NWH)
        OW_LO: tl.constexpr, NWW: tl.constexpr,
        G: tl.constexpr, BLOCK: tl.constexpr,
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
        n = t2 // n_br
        bh = t2 - n * n_br
        c0 = tl.minimum(cg * G, C - G)
        zero = _acc_zeros(q, x_ptr)
        coef = (zero + alpha_n) * (2.0 * BETA)
        # the block's pixels (clamped into the plane for the loads; those outside store nothing)
        n64 = n.to(tl.int64)
        pix = ()
        pok = ()
        for u in tl.static_range(SH):
            for v in tl.static_range(SW):
                ih = bh * SH + u
                iw = bw * SW + v
                pok = pok + ((ih < H) & (iw < W),)
                pix = pix + ((n64 * H + tl.minimum(ih, H - 1)) * W * C + (tl.minimum(iw, W - 1) * C + c0),)
        # the windows that can hold one of them (clamped into the pooled plane; those outside route nothing)
        wins = ()
        wok = ()
        for a in tl.static_range(NWH):
            for b in tl.static_range(NWW):
                oh = bh + (OH_LO + a)
                ow = bw + (OW_LO + b)
                wok = wok + ((oh >= 0) & (oh < OH) & (ow >= 0) & (ow < OW),)
                ohc = tl.minimum(tl.maximum(oh, 0), OH - 1)
                owc = tl.minimum(tl.maximum(ow, 0), OW - 1)
                wins = wins + ((n64 * OH + ohc) * OW * C + (owc * C + c0),)
        # halo offsets from c0: x's channels c0 - (SIZE - 1) .. c0 - 1 and c0 + G .. c0 + G + SIZE - 2
        # (0 outside [0, C), the value zeroed)
        hoffs = ()
        hoks = ()
        for h in tl.static_range(2 * SIZE - 2):
            if h < SIZE - 1:
                jh = h - (SIZE - 1)
            else:
                jh = G + h - (SIZE - 1)
            ok = (c0 + jh >= 0) & (c0 + jh < C)
            hoffs = hoffs + (tl.where(ok, jh, 0),)
            hoks = hoks + (ok,)
        # the pooled gradient routed to the block's pixels, channel by channel: gs[i][p]
        gs = ()
        for i in tl.static_range(NT):
            g_p = (zero,) * NPIX
            for a in tl.static_range(NWH):
                for b in tl.static_range(NWW):
                    if i < HI:  # a halo channel: the windows' data at a clamped channel
                        off = wins[a * NWW + b] + hoffs[i - HI + (SIZE - 1)]
                        m = wok[a * NWW + b] & hoks[i - HI + (SIZE - 1)]
                    elif i >= G + HI:
                        off = wins[a * NWW + b] + hoffs[i - HI - G + (SIZE - 1)]
                        m = wok[a * NWW + b] & hoks[i - HI - G + (SIZE - 1)]
                    else:
                        off = wins[a * NWW + b] + (i - HI)
                        m = wok[a * NWW + b]
                    am = tl.where(m, _ld_int(am_ptr + off), -1)
                    d = _upcast(_ld(dy_ptr + off))
                    g_p = _route(g_p, am, d, a, b, KH, KW, SH, SW, PH, PW, OH_LO, OW_LO)
            gs = gs + (g_p,)
        for p in tl.static_range(NPIX):
            r = _channels(x_ptr + pix[p], hoffs, hoks, G, SIZE - 1, SIZE - 1)
            ts = ()
            as_ = ()
            for i in tl.static_range(NT):
                ring = r[i:i + SIZE]
                pw_b, s_inv = _pow_neg2(k + alpha_n * _ring_sumsq(ring, SIZE), BETA)
                a_i = gs[i][p] * pw_b
                t_i = a_i * (ring[LO] * s_inv)  # g r s^-(beta+1)
                # channels outside [0, C) have no t (not even NaN from s = 0)
                if i < HI:
                    t_i = tl.where(hoks[i - HI + (SIZE - 1)], t_i, 0.0)
                elif i >= G + HI:
                    t_i = tl.where(hoks[i - HI - G + (SIZE - 1)], t_i, 0.0)
                ts = ts + (t_i,)
                as_ = as_ + (a_i,)
            for j in tl.static_range(G):
                r_c = r[j + SIZE - 1]
                t_sum = _ring_sum(ts[j:j + SIZE], SIZE)
                dx = tl.where(r_c > 0, as_[j + HI] - coef * r_c * t_sum, 0.0)
                _st_if(dx_ptr + pix[p] + j, dx.to(dx_ptr.dtype.element_ty), pok[p])

    if INTERPRET:
        # plain Python under the interpreter (see _jit.py): no inline PTX, and no re-patching per call
        def _ld_int(ptrs):
            return tl.load(ptrs).to(tl.int32)

        def _st_if(ptrs, v, ok):
            tl.store(ptrs, v, mask=ok)

        _channels = _channels.fn
        _row_maxima = _row_maxima.fn
        _route = _route.fn


# ------------------------------------------------------------------------------------ launchers

_ROWS = 4  # pooled rows a forward thread walks
_TOW = 2  # pooled columns a forward thread owns
_G = 8  # channels a thread owns
_BLOCK = 128


def _group(c: int) -> int:
    """Channels per thread: _G, or the largest power of two that C holds."""
    g = _G
    while g > c:
        g //= 2
    return g


def forward_fits(x, pool, size) -> bool:
    """Whether the channels_last forward applies: float32/16/bfloat16, no padding, KH >= SH and
    KW >= SW (the walk carries shared rows; every column a window reads is computed), small windows."""
    (kh, kw), (sh, sw), (ph, pw) = pool
    return (x.dtype != torch.float64 and ph == 0 and pw == 0 and kh >= sh and kw >= sw and kh * kw <= 25
            and size <= 9)


def backward_fits(x, pool, size) -> bool:
    from .lrn import _windows

    (kh, kw), (sh, sw), (ph, pw) = pool
    return (x.dtype != torch.float64 and size <= 7 and sh * sw <= 4
            and _windows(kh, sh, ph)[1] * _windows(kw, sw, pw)[1] <= 4)


@functools.lru_cache(maxsize=256)
def _fwd_plan(n, c, oh, ow, pool, size, beta):
    (kh, kw), (sh, sw), _ = pool
    g = _group(c)
    tow = min(_TOW, ow)
    rows = min(_ROWS, oh)
    n_cg, n_pc, n_pr = cdiv(c, g), cdiv(ow, tow), cdiv(oh, rows)
    n_q = n * n_pr * n_pc * n_cg
    cfg = Config(dict(SIZE=size, BETA=beta, KH=kh, KW=kw, SH=sh, SW=sw, TOW=tow, G=g, BLOCK=_BLOCK),
                 num_warps=_BLOCK // 32)
    return (cdiv(n_q, _BLOCK),), cfg, (n_cg, n_pc, n_pr, n_q, rows)


def launch_forward(x, y, am, pool, size, alpha, beta, k) -> bool:
    """The channels_last forward, if it applies (see forward_fits): True when launched."""
    n, c, h, w = x.shape
    oh, ow = y.shape[2:]
    (kh, kw), (sh, sw), _ = pool
    if not forward_fits(x, pool, size) or (oh - 1) * sh + kh > h or (ow - 1) * sw + kw > w:
        return False
    grid, cfg, (n_cg, n_pc, n_pr, n_q, rows) = _fwd_plan(n, c, oh, ow, pool, size, float(beta))
    launch("relu_lrn_max_pool2d_fwd", _cl_fwd_kernel, grid,
           (x, y, am, c, h, w, oh, ow, n_cg, n_pc, n_pr, n_q, rows, alpha / size, k), cfg, x.device, (rows,))
    return True


@functools.lru_cache(maxsize=256)
def _bwd_plan(n, c, h, w, pool, size, beta):
    from .lrn import _windows

    (kh, kw), (sh, sw), (ph, pw) = pool
    g = _group(c)
    n_cg, n_bc, n_br = cdiv(c, g), cdiv(w, sw), cdiv(h, sh)
    n_q = n * n_br * n_bc * n_cg
    (oh_lo, nwh), (ow_lo, nww) = _windows(kh, sh, ph), _windows(kw, sw, pw)
    cfg = Config(dict(SIZE=size, BETA=beta, KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw, OH_LO=oh_lo, NWH=nwh,
                      OW_LO=ow_lo, NWW=nww, G=g, BLOCK=_BLOCK), num_warps=_BLOCK // 32)
    return (cdiv(n_q, _BLOCK),), cfg, (n_cg, n_bc, n_br, n_q)


def launch_backward(x, dy, am, dx, pool, size, alpha, beta, k) -> bool:
    """The channels_last backward, if it applies (see backward_fits): True when launched."""
    if not backward_fits(x, pool, size):
        return False
    n, c, h, w = x.shape
    oh, ow = dy.shape[2:]
    grid, cfg, (n_cg, n_bc, n_br, n_q) = _bwd_plan(n, c, h, w, pool, size, float(beta))
    launch("relu_lrn_max_pool2d_bwd", _cl_bwd_kernel, grid,
           (x, dy, am, dx, c, h, w, oh, ow, n_cg, n_bc, n_br, n_q, alpha / size, k), cfg, x.device, ())
    return True
