"""Small @triton.jit helpers shared by the kernels (inlined by Triton where they are called).

Inline PTX (loads and stores that Triton's coalescing pass does not see, approximate rsqrt and sqrt,
max.NaN, packed conversions) is chosen at compile time, per helper, by ``_ptx(capability)``: only when
Triton compiles for an NVIDIA GPU of at least that compute capability (``max.NaN.f32`` and
``cvt.rn.bf16x2.f32`` need sm_80; the rest any) and the build has inline asm. Elsewhere (AMD GPUs, the
interpreter) the same helpers are ``tl.load`` / ``tl.store`` and Triton's math.

``ALEXNET_NO_ASM=1`` in the environment (read at import) builds every kernel without inline asm on any
GPU: the build that tells a failure of the PTX from one of the algorithm. It is part of every kernel's
cache key (``_NO_ASM``, a global constexpr), so the two builds never share a cached binary.
"""

from ._common import INTERPRET, NO_ASM, tl, triton

# Importing this module needs Triton: the op modules import it only when Triton is present.

_NO_ASM = tl.constexpr(NO_ASM)  # a global constexpr: Triton hashes its value into the kernels' keys


def _target():
    """The target Triton compiles for now: the active driver's current device (the JIT compiles for it);
    None without a driver (the interpreter)."""
    try:
        return triton.runtime.driver.active.get_current_target()
    except RuntimeError:
        return None


_target.__triton_builtin__ = True  # not a dependency to hash: the target is part of every compile's key


@triton.constexpr_function
def _ptx(capability):
    """Whether a helper may use inline PTX that needs compute capability ``capability`` (80: sm_80), as a
    compile-time constant: an NVIDIA target of at least that capability, in a build with inline asm."""
    if _NO_ASM:
        return False
    target = _target()
    return target is not None and target.backend == "cuda" and target.arch >= capability


@triton.jit
def _upcast(v):
    # float64 stays float64 (for gradcheck); everything else is computed in float32
    if v.dtype == tl.float64:
        return v
    else:
        return v.to(tl.float32)


@triton.jit
def _acc_zeros(t, ref_ptr):
    # zeros shaped like t in the compute dtype of ref_ptr's elements (float64 or float32)
    z = tl.zeros(t.shape, tl.float32)
    if ref_ptr.dtype.element_ty == tl.float64:
        z = z.to(tl.float64)
    return z


@triton.jit
def _tile_ids(C, BLOCK_C: tl.constexpr, P, BLOCK_P: tl.constexpr):
    """(channel block, pixel block, image) of this program in a 1-D grid, channel blocks varying
    fastest so that neighbours share the LRN window's halo in L2. A 1-D grid has room for 2^31 - 1
    programs (the y and z axes stop at 65535)."""
    return _grid_ids(tl.cdiv(C, BLOCK_C), tl.cdiv(P, BLOCK_P))


@triton.jit
def _grid_ids(n_c, n_p):
    """(channel block, pixel block, image) of this program in a 1-D grid of n_c channel blocks (fastest)
    times n_p pixel blocks times images."""
    pid = tl.program_id(0)
    rest = pid // n_c
    n = rest // n_p
    return pid - rest * n_c, rest - n * n_p, n


@triton.jit
def _relu(v):
    # relu that keeps NaN, like torch.relu: NaN < 0 is false
    return tl.where(v < 0, 0.0, v)


@triton.jit
def _window_sumsq(x_ptr, base, sp_off, c, C, valid, s_c, size, lo, BIG: tl.constexpr):
    """(sum over c' in [c - lo, c - lo + size) of relu(x[c'])^2, relu(x[c])) for a tile of channels c
    and spatial offsets sp_off; channels outside [0, C) count as 0 (PyTorch's zero padding). The
    centre comes from the same loads, so the caller needs no load of its own. BIG: int64 offsets."""
    acc = _acc_zeros(valid, x_ptr)
    centre = acc
    for j in range(size):
        cc = c + (j - lo)
        m = valid & (cc >= 0) & (cc < C)
        v = _relu(_upcast(tl.load(x_ptr + base + _offset(cc, BIG) * s_c + sp_off, mask=m, other=0.0)))
        acc = tl.fma(v, v, acc)  # as _ring_sumsq: fma(v0, v0, 0) is v0 * v0
        centre = tl.where(j == lo, v, centre)
    return acc, centre


@triton.jit
def _gather_pool_grad(dy_ptr, am_ptr, o_base, c, ih, iw, mask, out, o_strides, pool, BIG: tl.constexpr):
    """Gradient reaching input (c, ih, iw) from the windows whose argmax it is, summed in the windows'
    row-major order (as PyTorch's gather does). out = (OH, OW); o_strides = the channel, row and column
    strides of dy and am; pool = (KH, KW, SH, SW, PH, PW). BIG: int64 offsets."""
    OH, OW = out
    o_c, o_h, o_w = o_strides
    KH, KW, SH, SW, PH, PW = pool
    NH = (KH + SH - 1) // SH  # windows per row / column that can contain one position
    NW = (KW + SW - 1) // SW
    g = _acc_zeros(mask, dy_ptr)
    oh_last = (ih + PH) // SH  # the last window row that can contain ih
    ow_last = (iw + PW) // SW
    c_off = _offset(c, BIG) * o_c
    for a in range(NH):
        oh = oh_last - (NH - 1) + a
        kh = ih + PH - oh * SH
        ok_h = mask & (oh >= 0) & (oh < OH) & (kh < KH)
        for b in range(NW):
            ow = ow_last - (NW - 1) + b
            kw = iw + PW - ow * SW
            m = ok_h & (ow >= 0) & (ow < OW) & (kw < KW)
            off = o_base + c_off + _offset(oh, BIG) * o_h + _offset(ow, BIG) * o_w
            am = tl.load(am_ptr + off, mask=m, other=-1).to(tl.int32)
            hit = m & (am == kh * KW + kw)
            g += _upcast(tl.load(dy_ptr + off, mask=hit, other=0.0))
    return g


# ----------------------------------------------------------------- LRN by walking the channels
# A program walks the channels in order and keeps, per pixel, the last SIZE relu'd values in
# registers: a tuple used as a shift register (oldest first, newest last). The walk is unrolled by
# SIZE, so after SIZE shifts every value is back in its register: shifting costs no instruction.


@triton.jit
def _relu_up(v):
    """relu(v) in the compute dtype. float32 on sm_80 and later: one max.NaN (NaN stays NaN, as torch.relu
    keeps it) instead of a compare and a select."""
    u = _upcast(v)
    if u.dtype == tl.float32 and _ptx(80):
        return tl.inline_asm_elementwise("max.NaN.f32 $0, $1, 0f00000000;", "=r,r", [u], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return _relu(u)


@triton.jit
def _bf16_lo(w):
    """The bfloat16 in the low half of a 32-bit word, as float32 (exact)."""
    return (w << 16).to(tl.float32, bitcast=True)


@triton.jit
def _bf16_hi(w):
    return (w & -65536).to(tl.float32, bitcast=True)


@triton.jit
def _rounded(y0, y1, y_ptr):
    """y0 and y1 rounded to the output dtype (as relu_lrn stores them) and back to float32, as the fused
    blocks' LRN values compete in the pool. bfloat16 on sm_80 and later: one packed conversion for the pair
    (cvt.rn, as Triton's per-element conversion), 1.5 instructions a value instead of 2."""
    if y_ptr.dtype.element_ty == tl.bfloat16 and _ptx(80):
        w = tl.inline_asm_elementwise("cvt.rn.bf16x2.f32 $0, $2, $1;", "=r,r,r", [y0, y1], dtype=tl.int32,
                                      is_pure=True, pack=1)
        return _bf16_lo(w), _bf16_hi(w)
    else:
        return _upcast(y0.to(y_ptr.dtype.element_ty)), _upcast(y1.to(y_ptr.dtype.element_ty))


@triton.jit
def _rsqrt(s):
    """1 / sqrt(s). float32 on an NVIDIA GPU: one MUFU.RSQ (flush-to-zero approx), without the subnormal
    fix-up code that the non-ftz form costs: callers scale a subnormal s first (_pow_neg's TINY)."""
    if s.dtype == tl.float32 and _ptx(0):
        return tl.inline_asm_elementwise("rsqrt.approx.ftz.f32 $0, $1;", "=r,r", [s], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.math.rsqrt(s)


@triton.jit
def _ld(ptrs):
    """tl.load(ptrs) (no mask) as one inline PTX load per element on an NVIDIA GPU. For kernels with
    hundreds of loads: Triton's coalescing pass costs about (memory ops) x (kernel size), a minute of
    compile time for the fused block's patch walk, and an inline load is not a memory op to it. Its
    layout is the one the kernel's values have anyway (one element per thread), and ptxas folds the
    constant part of each address into the load's immediate offset, as for tl.load.

    The inline loads (_ld, _ld_idx, _ldv) are pure values to the compiler (is_pure=True): it may merge
    two equal ones across a store, or move one out of a loop, even above a loop that runs zero times.
    Invariants that make that correct: no kernel reads memory that it, or an output aliasing its input,
    writes (every op writes only tensors it allocated: tests/test_targets.py checks that no output shares
    memory with an input), and every inline load's address is valid whenever the kernel runs (offsets
    are clamped into the tensor, never masked)."""
    if not _ptx(0):
        return tl.load(ptrs)
    elif ptrs.dtype.element_ty == tl.float32:
        return tl.inline_asm_elementwise("ld.global.f32 $0, [$1];", "=r,l", [ptrs], dtype=tl.float32,
                                         is_pure=True, pack=1)
    elif ptrs.dtype.element_ty == tl.bfloat16:
        return tl.inline_asm_elementwise("ld.global.b16 $0, [$1];", "=h,l", [ptrs], dtype=tl.bfloat16,
                                         is_pure=True, pack=1)
    elif ptrs.dtype.element_ty == tl.float16:
        return tl.inline_asm_elementwise("ld.global.b16 $0, [$1];", "=h,l", [ptrs], dtype=tl.float16,
                                         is_pure=True, pack=1)
    else:
        return tl.load(ptrs)


@triton.jit
def _ld_idx(ptrs):
    """An argmax (uint8 or int32) as int32, loaded as _ld does."""
    if not _ptx(0):
        return tl.load(ptrs).to(tl.int32)
    elif ptrs.dtype.element_ty == tl.uint8:
        return tl.inline_asm_elementwise("ld.global.u8 $0, [$1];", "=r,l", [ptrs], dtype=tl.int32,
                                         is_pure=True, pack=1)
    elif ptrs.dtype.element_ty == tl.int32:
        return tl.inline_asm_elementwise("ld.global.b32 $0, [$1];", "=r,l", [ptrs], dtype=tl.int32,
                                         is_pure=True, pack=1)
    else:
        return tl.load(ptrs).to(tl.int32)


@triton.jit
def _st_if(ptrs, v, ok):
    """tl.store(ptrs, v, mask=ok) of a 16- or 32-bit element as inline PTX (see _st)."""
    addr = ptrs.to(tl.int64)
    flag = ok.to(tl.int32)
    if not _ptx(0):
        tl.store(ptrs, v, mask=ok)
    elif v.dtype.primitive_bitwidth == 32:
        tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.b32 p, $3, 0; @p st.global.b32 [$1], $2; mov.u32 $0, 0; }",
            "=r,l,r,r", [addr, v, flag], dtype=tl.int32, is_pure=False, pack=1)
    elif v.dtype.primitive_bitwidth == 16:
        tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.b32 p, $3, 0; @p st.global.b16 [$1], $2; mov.u32 $0, 0; }",
            "=r,l,h,r", [addr, v, flag], dtype=tl.int32, is_pure=False, pack=1)
    else:
        tl.store(ptrs, v, mask=ok)


@triton.jit
def _st(ptrs, v):
    """tl.store(ptrs, v) (no mask) as inline PTX, for the same reason as _ld (an 8-, 16- or 32-bit
    element; v already in the pointer's dtype). The asm yields a dummy value: it is not pure, so it
    stays."""
    addr = ptrs.to(tl.int64)
    if not _ptx(0):
        tl.store(ptrs, v)
    elif v.dtype.primitive_bitwidth == 32:
        tl.inline_asm_elementwise("st.global.b32 [$1], $2;\n\tmov.u32 $0, 0;", "=r,l,r", [addr, v],
                                  dtype=tl.int32, is_pure=False, pack=1)
    elif v.dtype.primitive_bitwidth == 16:
        tl.inline_asm_elementwise("st.global.b16 [$1], $2;\n\tmov.u32 $0, 0;", "=r,l,h", [addr, v],
                                  dtype=tl.int32, is_pure=False, pack=1)
    elif v.dtype.primitive_bitwidth == 8:
        wide = v.to(tl.int32)  # st.b8 stores the low byte of a 32-bit register
        tl.inline_asm_elementwise("st.global.b8 [$1], $2;\n\tmov.u32 $0, 0;", "=r,l,r", [addr, wide],
                                  dtype=tl.int32, is_pure=False, pack=1)
    else:
        tl.store(ptrs, v)


@triton.jit
def _st_row(ptrs, vals, N: tl.constexpr):
    """Store the N values ``vals`` (already in the pointer's dtype) at ptrs + 0 .. N - 1: one _st each
    with inline PTX, else one (BLOCK, N) tl.store (N a power of two; see _ldv)."""
    if _ptx(0):
        for e in tl.static_range(N):
            _st(ptrs + e, vals[e])
    else:
        tl.store(ptrs[:, None] + tl.arange(0, N)[None, :], _join_cols(vals, N))


@triton.jit
def _sqrt(s):
    if s.dtype == tl.float32 and _ptx(0):
        return tl.inline_asm_elementwise("sqrt.approx.ftz.f32 $0, $1;", "=r,r", [s], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.sqrt(s)


@triton.jit
def _pow_neg(s, BETA: tl.constexpr, TINY: tl.constexpr):
    """s ** -BETA for s >= 0, with inf / NaN / 0 as IEEE pow gives them. AlexNet's 0.75 (and 0.5, 1)
    take an rsqrt form: 3 instructions instead of a log2 and an exp2. TINY: s may be subnormal (k below
    float32's normal range, or alpha < 0); the float32 approximations (and Triton's libdevice, built
    flush-to-zero) would read it as 0 and give inf, so it is scaled by 2^24 first and the power back."""
    if TINY and s.dtype == tl.float32:
        small = s < 1.1754943508222875e-38
        p = _pow_neg_normal(tl.where(small, s * 16777216.0, s), BETA)
        return p * tl.where(small, _two_pow(24.0 * BETA), 1.0)
    else:
        return _pow_neg_normal(s, BETA)


@triton.constexpr_function
def _two_pow(e):
    return 2.0 ** e


@triton.jit
def _pow_neg_normal(s, BETA: tl.constexpr):
    """s ** -BETA as _pow_neg, for s = 0 or normal (or any s in float64)."""
    if BETA == 0.75:
        r = _rsqrt(s)
        return r * _sqrt(r)
    elif BETA == 0.5:
        return _rsqrt(s)
    elif BETA == 1.0:
        return 1.0 / s
    elif BETA == 0.0:
        return tl.zeros_like(s) + 1.0
    else:
        return tl.exp2(-BETA * tl.log2(s))


@triton.jit
def _ring_sumsq(ring, SIZE: tl.constexpr):
    """Sum of squares of the ring, oldest first, as one fma chain: every kernel rounds it identically,
    whatever its basic blocks (LLVM contracts a * b + c only within one; tests/test_compile_sm.py
    reads every LRN kernel's SASS and fails on an unfused add of a square)."""
    s = ring[0] * ring[0]
    for d in tl.static_range(1, SIZE):
        s = tl.fma(ring[d], ring[d], s)
    return s


# ------------------------------------------------------------------------------------ the LRN core
# Every kernel computes LRN with these three helpers, each multiply-add an explicit fma in one order.


@triton.jit
def _lrn_y(r, sumsq, alpha_n, k, BETA: tl.constexpr, TINY: tl.constexpr):
    """y = r * (k + alpha_n * sumsq) ** -BETA: the forward, from relu(x) of the channel and its window's
    sum of squares (_ring_sumsq's)."""
    return r * _pow_neg(tl.fma(alpha_n, sumsq, k), BETA, TINY)


@triton.jit
def _lrn_ta_s(sumsq, r, g, alpha_n, k, BETA: tl.constexpr, TINY: tl.constexpr):
    """(t, a) of a channel from its window's sum of squares, its relu(x) r and the gradient g of its LRN
    output: a = g s^-beta, t = a r s^-1 (see lrn.py's backward walk)."""
    pw_b, s_inv = _pow_neg2(tl.fma(alpha_n, sumsq, k), BETA, TINY)
    a = g * pw_b
    return a * (r * s_inv), a


@triton.jit
def _lrn_dx_sum(r_c, a_c, t_sum, coef):
    """dx of channel c: [x_c > 0] (a_c - coef r_c t_sum), t_sum the sum of t over the channels whose
    windows hold c, coef = 2 (alpha / size) beta."""
    return tl.where(r_c > 0, tl.fma(-(coef * r_c), t_sum, a_c), 0.0)


@triton.jit
def _ring_sum(ring, SIZE: tl.constexpr):
    s = ring[0]
    for d in tl.static_range(1, SIZE):
        s += ring[d]
    return s


@triton.jit
def _in_range(c, lo, hi, MASKED: tl.constexpr):
    """Whether channel c lies in [lo, hi): tested only in a walk's MASKED (bound-checked) groups."""
    if MASKED:
        return (c >= lo) & (c < hi)
    else:
        return True


@triton.jit
def _offset(c, BIG: tl.constexpr):
    """c as an offset factor: int64 where offsets may pass 2^31 (BIG), else as it is."""
    if BIG:
        return c.to(tl.int64)
    else:
        return c


@triton.jit
def _shift(ring, v):
    """The ring with its oldest value dropped and v appended."""
    return ring[1:] + (v,)


@triton.jit
def _put(t, j: tl.constexpr, v):
    """The tuple t with slot j replaced by v."""
    return t[:j] + (v,) + t[j + 1:]


@triton.jit
def _pow_neg2(s, BETA: tl.constexpr, TINY: tl.constexpr):
    """(s ** -BETA, s ** -1) for s >= 0, as _pow_neg: s ** -(BETA + 1) is their product."""
    if TINY and s.dtype == tl.float32:
        small = s < 1.1754943508222875e-38
        p_b, p_1 = _pow_neg2_normal(tl.where(small, s * 16777216.0, s), BETA)
        return p_b * tl.where(small, _two_pow(24.0 * BETA), 1.0), p_1 * tl.where(small, 16777216.0, 1.0)
    else:
        return _pow_neg2_normal(s, BETA)


@triton.jit
def _pow_neg2_normal(s, BETA: tl.constexpr):
    if BETA == 0.75:
        r = _rsqrt(s)
        return r * _sqrt(r), r * r
    elif BETA == 0.5:
        r = _rsqrt(s)
        return r, r * r
    elif BETA == 1.0:
        p = 1.0 / s
        return p, p
    else:
        lg = tl.log2(s)
        return tl.exp2(-BETA * lg), tl.exp2(-lg)

@triton.constexpr_function
def _vec_ld_asm(kind, n):
    """PTX loading n consecutive elements with one aligned vector load into n float32 outputs $0..$n-1
    (address in $n): "f32" straight, "bf16" unpacked from 32-bit words with one shift or and each,
    "f16" with one cvt each."""
    if kind == "f32":
        return f"ld.global.v{n}.b32 {{{', '.join(f'${e}' for e in range(n))}}}, [${n}];"
    words = n // 2
    ts = ", ".join(f"t{w}" for w in range(words))
    load = f"ld.global.v{words}.b32 {{{ts}}}, [${n}];" if words > 1 else f"ld.global.b32 t0, [${n}];"
    regs = f".reg .b32 t<{words}>;" if words > 1 else ".reg .b32 t0;"
    lines = [regs] + ([f".reg .b16 h<{n}>;"] if kind == "f16" else []) + [load]
    for w in range(words):
        if kind == "bf16":
            lines += [f"shl.b32 ${2 * w}, t{w}, 16;", f"and.b32 ${2 * w + 1}, t{w}, 0xffff0000;"]
        else:
            lines += [f"mov.b32 {{h{2 * w}, h{2 * w + 1}}}, t{w};"]
    if kind == "f16":
        lines += [f"cvt.f32.f16 ${e}, h{e};" for e in range(n)]
    return "{\n\t" + "\n\t".join(lines) + "\n\t}"


@triton.constexpr_function
def _vec_st_asm(cvt, n):
    """PTX storing n values ($2..$n+1; address in $1) with one aligned vector store: 32-bit values
    straight (cvt None), or rounded in pairs to 16 bits with ``cvt`` (cvt.rn.bf16x2.f32 or
    cvt.rn.f16x2.f32); $0 is a dummy output."""
    if cvt is None:
        return f"st.global.v{n}.b32 [$1], {{{', '.join(f'${e + 2}' for e in range(n))}}};\n\tmov.u32 $0, 0;"
    words = n // 2
    lines = [f".reg .b32 t<{words}>;" if words > 1 else ".reg .b32 t0;"]
    lines += [f"{cvt} t{w}, ${2 * w + 3}, ${2 * w + 2};" for w in range(words)]
    ts = ", ".join(f"t{w}" for w in range(words))
    lines += [f"st.global.v{words}.b32 [$1], {{{ts}}};" if words > 1 else "st.global.b32 [$1], t0;",
              "mov.u32 $0, 0;"]
    return "{\n\t" + "\n\t".join(lines) + "\n\t}"


@triton.constexpr_function
def _vec_constraints(outs, ins):
    """Inline-asm constraints: ``outs`` 32-bit outputs, one 64-bit address, then ``ins`` 32-bit operands."""
    return ",".join(["=r"] * outs + ["l"] + ["r"] * ins)


@triton.constexpr_function
def _bit_reversed(e, bits):
    return int(format(e, f"0{bits}b")[::-1], 2) if bits else 0


@triton.jit
def _split_cols(t, VEC: tl.constexpr):
    """The VEC columns of t (BLOCK, VEC), VEC in 1, 2, 4, 8: a tuple of (BLOCK,) tensors. tl.split halves
    the last axis of size 2 (the lowest bit of the column), so after log2(VEC) rounds column e sits at
    the bit-reversed index of e."""
    B: tl.constexpr = t.shape[0]
    if VEC == 8:
        parts = (tl.reshape(t, (B, 2, 2, 2)),)
        BITS: tl.constexpr = 3
    elif VEC == 4:
        parts = (tl.reshape(t, (B, 2, 2)),)
        BITS: tl.constexpr = 2
    elif VEC == 2:
        parts = (t,)
        BITS: tl.constexpr = 1
    else:
        parts = (tl.reshape(t, (B,)),)
        BITS: tl.constexpr = 0
    for _r in tl.static_range(BITS):
        halves = ()
        for q in tl.static_range(len(parts)):
            a, b = tl.split(parts[q])
            halves = halves + (a, b)
        parts = halves
    cols = ()
    for e in tl.static_range(VEC):
        cols = cols + (parts[_bit_reversed(e, BITS)],)
    return cols


@triton.jit
def _join_cols(cols, VEC: tl.constexpr):
    """The inverse of _split_cols: VEC (BLOCK,) tensors as one (BLOCK, VEC) tensor, column e = cols[e]."""
    B: tl.constexpr = cols[0].shape[0]
    if VEC == 1:
        return tl.reshape(cols[0], (B, 1))
    else:
        if VEC == 8:
            BITS: tl.constexpr = 3
        elif VEC == 4:
            BITS: tl.constexpr = 2
        else:
            BITS: tl.constexpr = 1
        parts = ()
        for e in tl.static_range(VEC):
            parts = parts + (cols[_bit_reversed(e, BITS)],)
        for _r in tl.static_range(BITS):
            pairs = ()
            for q in tl.static_range(len(parts) // 2):
                pairs = pairs + (tl.join(parts[2 * q], parts[2 * q + 1]),)
            parts = pairs
        return tl.reshape(parts[0], (B, VEC))


@triton.jit
def _ldv(ptrs, VEC: tl.constexpr):
    """VEC consecutive elements at ptrs (aligned to VEC elements), upcast (float32, or float64): a
    tuple. bfloat16 widens with one shift or and per element, float16 with one cvt."""
    if VEC == 1:
        return (_upcast(_ld(ptrs)),)
    elif not _ptx(0):
        # one (BLOCK, VEC) load split into columns: VEC loads each would cost Triton's coalescing pass
        # time quadratic in the kernel's memory ops (minutes for the channels_last block)
        cols = _split_cols(tl.load(ptrs[:, None] + tl.arange(0, VEC)[None, :]), VEC)
        vals = ()
        for e in tl.static_range(VEC):
            vals = vals + (_upcast(cols[e]),)
        return vals
    else:
        if ptrs.dtype.element_ty == tl.float32:
            KIND: tl.constexpr = "f32"
        elif ptrs.dtype.element_ty == tl.bfloat16:
            KIND: tl.constexpr = "bf16"
        else:
            KIND: tl.constexpr = "f16"
        return tl.inline_asm_elementwise(_vec_ld_asm(KIND, VEC), _vec_constraints(VEC, 0), [ptrs],
                                         dtype=(tl.float32,) * VEC, is_pure=True, pack=1)


@triton.jit
def _stv(ptrs, v, VEC: tl.constexpr):
    """Store the tuple v (VEC values in the compute dtype) at ptrs (aligned to VEC elements), rounded to
    the pointer's dtype (round to nearest even, as .to() does): one vector store; bfloat16 and
    float16 pack two values with one cvt (sm_80 and later; before, and without inline asm, VEC stores)."""
    if VEC == 1:
        _st(ptrs, v[0].to(ptrs.dtype.element_ty))
    elif not _ptx(0):  # one (BLOCK, VEC) store (see _ldv)
        cols = ()
        for e in tl.static_range(VEC):
            cols = cols + (v[e].to(ptrs.dtype.element_ty),)
        tl.store(ptrs[:, None] + tl.arange(0, VEC)[None, :], _join_cols(cols, VEC))
    elif ptrs.dtype.element_ty != tl.float32 and not _ptx(80):  # no packed conversion before sm_80
        for e in tl.static_range(VEC):
            _st(ptrs + e, v[e].to(ptrs.dtype.element_ty))
    else:
        addr = ptrs.to(tl.int64)
        if ptrs.dtype.element_ty == tl.float32:
            CVT: tl.constexpr = None
        elif ptrs.dtype.element_ty == tl.bfloat16:
            CVT: tl.constexpr = "cvt.rn.bf16x2.f32"
        else:
            CVT: tl.constexpr = "cvt.rn.f16x2.f32"
        tl.inline_asm_elementwise(_vec_st_asm(CVT, VEC), _vec_constraints(1, VEC), (addr,) + v,
                                  dtype=tl.int32, is_pure=False, pack=1)

@triton.jit
def _lrn_ta(ring, g, alpha_n, k, SIZE: tl.constexpr, BETA: tl.constexpr, TINY: tl.constexpr):
    """(t, a) of a channel j from the relu'd values of its window (``ring``, oldest first) and the gradient
    g of its LRN output: a = g s^-beta, t = a r_j s^-1 = g r_j s^-(beta+1) (see lrn.py's backward walk).
    Every backward kernel computes them with this code, so every layout and fusion gives the same bits."""
    LO: tl.constexpr = SIZE // 2
    return _lrn_ta_s(_ring_sumsq(ring, SIZE), ring[LO], g, alpha_n, k, BETA, TINY)


@triton.jit
def _lrn_dx(r_c, a_c, ts, coef, SIZE: tl.constexpr):
    """dx of channel c: [x_c > 0] (a_c - coef r_c sum t) over the SIZE channels whose windows hold c
    (``ts``, oldest first); coef = 2 (alpha / size) beta, r_c = relu(x_c)."""
    return _lrn_dx_sum(r_c, a_c, _ring_sum(ts, SIZE), coef)


if INTERPRET:
    # Triton's interpreter re-patches triton.language on every call of a @triton.jit function (about
    # 0.3 ms); the walking kernels call these small helpers per pixel and per channel, so under the
    # interpreter they run as the plain Python functions they are (the same code, a hundred times faster).
    # (The interpreter has no inline PTX: there 1/sqrt and sqrt are numpy's, exact where the GPU's
    # approximations are within 2 ulps.)
    def _rsqrt(s):
        return tl.math.rsqrt(s)

    def _sqrt(s):
        return tl.sqrt(s)

    _upcast = _upcast.fn
    _relu = _relu.fn

    def _rounded(y0, y1, y_ptr):  # no inline PTX here
        return _upcast(y0.to(y_ptr.dtype.element_ty)), _upcast(y1.to(y_ptr.dtype.element_ty))

    def _relu_up(v):
        return _relu(_upcast(v))

    _pow_neg = _pow_neg.fn
    _pow_neg2 = _pow_neg2.fn
    _pow_neg_normal = _pow_neg_normal.fn
    _pow_neg2_normal = _pow_neg2_normal.fn

    def _two_pow(e):
        return 2.0 ** e
    _ring_sumsq = _ring_sumsq.fn
    _ring_sum = _ring_sum.fn
    _lrn_ta = _lrn_ta.fn
    _lrn_dx = _lrn_dx.fn
    _lrn_y = _lrn_y.fn
    _lrn_ta_s = _lrn_ta_s.fn
    _lrn_dx_sum = _lrn_dx_sum.fn
    _shift = _shift.fn
    _in_range = _in_range.fn
    _offset = _offset.fn
    _put = _put.fn

    def _ld(ptrs):
        return tl.load(ptrs)

    def _st(ptrs, v):
        tl.store(ptrs, v)

    def _ld_idx(ptrs):
        return tl.load(ptrs).to(tl.int32)

    def _ldv(ptrs, VEC):
        return tuple(_upcast(tl.load(ptrs + e)) for e in range(getattr(VEC, "value", VEC)))

    def _stv(ptrs, v, VEC):
        for e in range(len(v)):
            tl.store(ptrs + e, v[e].to(ptrs.dtype.element_ty))

    def _st_if(ptrs, v, ok):
        tl.store(ptrs, v, mask=ok)

    def _st_row(ptrs, vals, N):
        for e in range(len(vals)):
            tl.store(ptrs + e, vals[e])
