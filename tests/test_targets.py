"""Targets and builds: the inline-PTX gating (kernels/_jit.py ``_ptx``), the build without inline asm
(``ALEXNET_NO_ASM=1``), ROCm, k = 0 and other betas, and the no-aliasing invariant the inline loads rely on.

The compile matrix itself (every launch for every target) is tests/test_compile_sm.py; here a few small
launches are compiled per target to show that the gating is real in both directions: sm_80 and later
keep their inline PTX (the static cost depends on it), sm_75 takes the other branch where an instruction
needs sm_80, AMD and the build without inline asm hold none."""

import json
import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch

import kernels
import kernels._common as common
from kernels import reference
from tests._utils import TOLERANCES, assert_close_verbose, to_memory_format

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ------------------------------------------------------------------------------ where the ops run


def test_rocm_devices_run_the_triton_kernels(monkeypatch):
    # ROCm's torch names its devices "cuda": the ops must launch their Triton kernels there (built
    # without inline PTX), not fall back to the PyTorch path
    monkeypatch.setattr(torch.version, "hip", "6.2.41133")
    assert common.use_triton(types.SimpleNamespace(device=torch.device("cuda", 0)))
    assert not common.inline_ptx()


def test_inline_ptx_by_default_on_nvidia(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", None)
    assert common.inline_ptx() == (not common.NO_ASM)


@pytest.mark.parametrize("hip", [None, "6.2.41133"])
def test_nchw_block_takes_the_tiles_without_inline_ptx(monkeypatch, hip):
    # the patch walks' hundreds of loads compile in seconds only as inline PTX (minutes as tl.load, in
    # Triton's coalescing pass): builds without it launch the tile kernels instead
    monkeypatch.setattr(torch.version, "hip", hip)
    launches = []
    x = torch.empty(2, 96, 27, 27).requires_grad_()
    with common.recording(launches.append):
        y = kernels.relu_lrn_max_pool2d(x)
        torch.autograd.grad(y, x, torch.empty_like(y))
    names = [getattr(launch.fn, "fn", launch.fn).__name__ for launch in launches]
    patch = ["_patch_fwd_kernel", "_patch_bwd_kernel"]
    tiles = ["_pool_fwd_kernel", "_pool_bwd_kernel"]
    assert names == (patch if common.inline_ptx() else tiles), names


def test_no_asm_variable_switches_the_build_off():
    # read at import: one fresh process imports the two modules again for each value (a process each
    # would cost ~4 s of CPU, most of it importing torch)
    code = textwrap.dedent("""
        import importlib, os, sys
        import kernels._common as c, kernels._jit as j
        for value in sys.argv[1:]:
            os.environ["ALEXNET_NO_ASM"] = value
            c, j = importlib.reload(c), importlib.reload(j)
            print(value or "empty", c.NO_ASM, c.inline_ptx(), bool(j._NO_ASM))
    """)
    cases = {"1": "True False True", "0": "False True False", "": "False True False"}
    out = subprocess.run([sys.executable, "-c", code, *cases], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    got = {line.split()[0]: " ".join(line.split()[1:]) for line in out.stdout.splitlines()[-len(cases):]}
    assert got == {value or "empty": expected for value, expected in cases.items()}, out.stdout


# ------------------------------------------------------------- the gating, compiled per target

# Compiles a few small launches (relu_lrn float32 NCHW: max.NaN; the channels_last block's forward in
# bfloat16: cvt.rn.bf16x2 and the vector loads) for each target and prints what their code holds. (The
# block's backward, where its loads are tl.load (AMD, the build without inline asm), takes ~25 s of CPU to
# compile, nearly all in Triton's coalescing pass: test_compile_sm.py's matrix compiles it.)
_SCRIPT = textwrap.dedent(r"""
    import json, re, sys
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    import kernels
    import bench.tools.sass_cost as sc

    class Fake(sc.FakeCudaDriver):
        def __init__(self, target):
            self.target, self.arch = target, target.arch

        def get_current_target(self):
            return self.target

        def get_current_device(self):
            return f"{self.target.backend}{self.target.arch}"

    # (call, shape, dtype, layout, with the backward)
    cases = [(lambda x: kernels.relu_lrn(x), (2, 8, 5, 7), torch.float32, "nchw", True),
             (lambda x: kernels.relu_lrn_max_pool2d(x), (2, 16, 7, 7), torch.bfloat16, "channels_last",
              False)]
    out = {}
    for name in sys.argv[1:]:
        target = GPUTarget("hip", name, 64) if name.startswith("gfx") else GPUTarget("cuda", int(name), 32)
        torch.version.hip = "6.0" if target.backend == "hip" else None
        found = dict(inline_asm=0, max_nan=0, bf16x2=0, vector_ld=0)
        for call, shape, dtype, layout, backward in cases:
            fwd, bwd, _, _ = sc.capture(call, shape, dtype, layout)
            for launch in fwd + bwd if backward else fwd:
                previous = driver._active
                driver.set_active(Fake(target))
                try:
                    k = launch.fn.warmup(*launch.args, grid=launch.grid, **launch.constexprs,
                                         num_warps=launch.num_warps)
                finally:
                    driver._active = previous
                code = k.asm.get("ptx", "") + k.asm.get("amdgcn", "")
                found["inline_asm"] += k.asm["ttir"].count("tt.elementwise_inline_asm")
                found["max_nan"] += code.count("max.NaN.f32")
                found["bf16x2"] += code.count("cvt.rn.bf16x2.f32")
                found["vector_ld"] += len(re.findall(r"ld\.global\.v[248]\.b32", code))
        out[name] = found
    print(json.dumps(out))
""")


def _compile_gating(*targets, no_asm=False) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=ROOT, ALEXNET_NO_ASM="1" if no_asm else "0")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, *map(str, targets)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_inline_ptx_only_where_the_target_has_it():
    got = _compile_gating(90, 80, 75, "gfx942")
    for arch in ("90", "80"):  # the inline PTX the static cost relies on is there
        assert got[arch]["max_nan"] and got[arch]["bf16x2"] and got[arch]["vector_ld"], got[arch]
    # sm_75: no instruction that needs sm_80, the rest of the PTX (loads, rsqrt) stays
    assert got["75"]["max_nan"] == 0 and got["75"]["bf16x2"] == 0, got["75"]
    assert got["75"]["inline_asm"] and got["75"]["vector_ld"], got["75"]
    assert got["gfx942"]["inline_asm"] == 0, got["gfx942"]


def test_build_without_inline_asm_has_none():
    # (Triton's own lowering of tl.load / tl.store and conversions writes PTX too, vector loads and
    # cvt.rn.bf16x2 among it: the test is that the kernels hold no inline asm op of their own)
    got = _compile_gating(90, no_asm=True)
    assert got["90"]["inline_asm"] == 0 and got["90"]["max_nan"] == 0, got


# ----------------------------------------------------------- column split and join (no-PTX vectors)

if common.HAS_TRITON:
    from kernels._common import tl, triton
    from kernels._jit import _join_cols, _split_cols

    @triton.jit
    def _columns_kernel(x_ptr, cols_ptr, y_ptr, B: tl.constexpr, VEC: tl.constexpr):
        rows = tl.arange(0, B)
        t = tl.load(x_ptr + rows[:, None] * VEC + tl.arange(0, VEC)[None, :])
        cols = _split_cols(t, VEC)
        for e in tl.static_range(VEC):
            tl.store(cols_ptr + e * B + rows, cols[e])
        tl.store(y_ptr + rows[:, None] * VEC + tl.arange(0, VEC)[None, :], _join_cols(cols, VEC))


@pytest.mark.skipif(not (common.HAS_TRITON and common.INTERPRET), reason="needs Triton's interpreter")
@pytest.mark.parametrize("vec", [1, 2, 4, 8])
def test_split_and_join_columns(vec):
    # the vector loads and stores of builds without inline PTX: column e of a (BLOCK, VEC) tile is cols[e]
    x = torch.arange(16 * vec, dtype=torch.float32).reshape(16, vec)
    cols = torch.empty(vec, 16)
    y = torch.empty_like(x)
    _columns_kernel[(1,)](x, cols, y, B=16, VEC=vec)
    assert torch.equal(cols, x.t()), cols
    assert torch.equal(y, x)


# ----------------------------------------------------------------------------- k = 0, any beta

needs_interpreter = pytest.mark.skipif(not kernels.use_triton(torch.empty(0)),
                                       reason="the Triton kernels run on CPU only under the interpreter")


@needs_interpreter
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_k_zero_with_subnormal_window_sums(fmt, dtype):
    # k = 0 and tiny activations: s = alpha / size * sum r^2 ~ 1e-41 is subnormal; the kernels scale it
    # around their flush-to-zero approximations (TINY): finite where PyTorch is
    torch.manual_seed(0)
    x = to_memory_format((torch.rand(2, 8, 7, 9) * 2e-18).to(dtype), fmt)
    for op, ref in ((kernels.relu_lrn, reference.relu_lrn),
                    (kernels.relu_lrn_max_pool2d, lambda x, *a: torch.nn.functional.max_pool2d(
                        reference.relu_lrn(x, *a), 3, 2))):
        out = op(x, 5, 1e-4, 0.75, 0.0)
        expected = ref(x.float(), 5, 1e-4, 0.75, 0.0).to(dtype)
        assert (torch.isfinite(expected) & (expected != 0)).float().mean() > 0.5
        assert_close_verbose(out, expected, TOLERANCES[dtype], name=f"{op.__name__} k=0 {fmt} {dtype}")


@needs_interpreter
@pytest.mark.parametrize("beta", [0.5, 1.0, 0.6, 2.0])
@pytest.mark.parametrize("k", [0.0, 1.0])
def test_other_betas_and_k_zero_forward_and_backward(beta, k):
    torch.manual_seed(1)
    x = (torch.randn(2, 9, 6, 7) + 0.3).requires_grad_()
    g = torch.randn(2, 9, 6, 7)
    out = kernels.relu_lrn(x, 5, 1e-2, beta, k)
    (dx,) = torch.autograd.grad(out, x, g)
    xr = x.detach().double().requires_grad_()
    ref = reference.relu_lrn(xr, 5, 1e-2, beta, k)
    (ref_dx,) = torch.autograd.grad(ref, xr, g.double())
    finite = torch.isfinite(ref)
    tol = TOLERANCES[torch.float32]
    assert_close_verbose(out[finite], ref[finite].float(), tol, name=f"relu_lrn beta={beta} k={k}")
    ok = torch.isfinite(ref_dx)
    scale = float(ref_dx[ok].abs().max())
    assert_close_verbose(dx[ok], ref_dx[ok].float(), type(tol)(tol.atol + 1e-5 * scale, 1e-4, "backward"),
                         name=f"relu_lrn backward beta={beta} k={k}")


# ------------------------------------------------------------------ no output aliases an input

# The inline loads are pure values to the compiler (kernels/_jit.py ``_ld``): it may merge two of them
# or move one above a store or out of a loop. That is correct only while no kernel reads memory that it,
# or an output aliasing its input, writes: every op writes only fresh tensors of its own.


def _storages(ts):
    return [(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in ts if t is not None]


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[1] and b[0] < a[0] + a[1]


@needs_interpreter
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
@pytest.mark.parametrize("name", ["relu_lrn", "max_pool2d", "relu_max_pool2d", "relu_lrn_max_pool2d",
                                  "dropout", "relu_dropout"])
def test_no_output_aliases_an_input(name, fmt):
    op = getattr(kernels, name, None)
    if op is None:
        pytest.skip(f"kernels.{name} does not exist")
    kwargs = {"kernel_size": 3, "stride": 2} if "pool" in name else {"p": 0.5} if "dropout" in name else {}
    x = to_memory_format(torch.randn(2, 6, 7, 9), fmt).requires_grad_()
    y = op(x, **kwargs)
    g = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, g)
    inputs = _storages([x, g])
    for out in (y, dx):
        for s in _storages([out]):
            assert not any(_overlap(s, i) for i in inputs), f"{name}: an output shares memory with an input"
