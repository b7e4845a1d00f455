"""Every kernel launch the ops issue compiles, without a GPU, for the GPUs users own, exactly as Triton's
JIT would compile it at runtime (the same integer specialisations, alignment hints, constexprs and
num_warps), with no register spills.

Targets: NVIDIA sm_75 (T4), sm_80 (A100), sm_86 (A10, RTX 30), sm_89 (L4, RTX 40), sm_90a (H100/H200),
sm_100 (B200), sm_120 (RTX 50), and AMD gfx90a (MI250) and gfx942 (MI300). NVIDIA's spills come from
the ptxas shipped with Triton, AMD's from the kernel descriptor in the amdgcn assembly (VGPR and SGPR
spill counts, scratch). Inline PTX is chosen per target at compile time (kernels/_jit.py ``_ptx``): an AMD
kernel must hold no inline asm at all (its TTIR no ``tt.elementwise_inline_asm``), nor any kernel of the
build without inline asm (``ALEXNET_NO_ASM=1``, which this test passes on to the compiling process).

The launches are captured with ``kernels._common.recording`` (the public ops, forward and backward, on
CPU tensors) and compiled by bench/tools/sass_cost.py's machinery under a fake driver that reports the
target, at AlexNet's batch-128 shapes and at small odd shapes, in both memory formats. AMD launches are
captured as a ROCm torch issues them (``torch.version.hip`` set: the launchers pick structures without
inline PTX).

Compiling is what costs (0.2 s to 30 s of CPU a kernel), so by default the test compiles a plan sized for
a few minutes of CPU: AlexNet's shapes in float32 and bfloat16 for sm_90a, conv1's relu_lrn and fused
block in bfloat16 for sm_75 and (NCHW) gfx942, and each odd case (per layout) in one (dtype, target) pair, the
pairs taken in turn over float32/float16/bfloat16/float64 and sm_90a/sm_80/sm_75/gfx942.
``COMPILE_SM_MATRIX=1`` (``.ci/run``) takes the odd cases' turns over every target of the matrix and
compiles AlexNet's shapes in bfloat16 for each; ``COMPILE_SM_FULL=1`` compiles every case in every dtype for
every target (hours on 2 cores); ``COMPILE_SM_TARGETS=75,gfx942`` restricts either to those targets.
Triton's cache (``~/.triton/cache``, or ``TRITON_CACHE_DIR``) makes reruns much faster."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = os.environ.get("COMPILE_SM_FULL", "0") not in ("", "0")
DTYPES = ["float32", "float16", "bfloat16", "float64"]
# the matrix: NVIDIA compute capabilities (sm_90a is 90 here) and AMD architectures
MATRIX = (75, 80, 86, 89, 90, 100, 120, "gfx90a", "gfx942")
# COMPILE_SM_TARGETS=75,gfx942: the full matrix on these targets only (to split it across CI jobs)
if os.environ.get("COMPILE_SM_TARGETS"):
    MATRIX = tuple(a for a in MATRIX if str(a) in os.environ["COMPILE_SM_TARGETS"].split(","))
DEFAULT_TARGETS = (90, 80, 75, "gfx942")  # the default plan's rotation
# COMPILE_SM_MATRIX=1 (.ci/run): the matrix within CI's time: AlexNet's shapes in bfloat16 (the dtype with
# the most target-dependent code) on every target of MATRIX, float32 on sm_90a, and the odd cases rotating
# over every target of MATRIX; a few minutes a build, where COMPILE_SM_FULL takes hours
CI_MATRIX = os.environ.get("COMPILE_SM_MATRIX", "0") not in ("", "0")
ROTATION = MATRIX if CI_MATRIX else DEFAULT_TARGETS
BOTH = ["nchw", "channels_last"]
LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)
ALEX = dict(kernel_size=3, stride=2, padding=0)

# (op, input shape, keyword arguments, layouts): AlexNet's batch-128 shapes, then small odd shapes that
# reach the other launch configurations and specialisations.
ALEXNET = [
    ("relu_lrn", (128, 96, 55, 55), LRN, BOTH),
    ("relu_lrn", (128, 256, 27, 27), LRN, BOTH),
    ("max_pool2d", (128, 96, 55, 55), ALEX, BOTH),
    ("max_pool2d", (128, 256, 27, 27), ALEX, BOTH),
    ("max_pool2d", (128, 256, 13, 13), ALEX, BOTH),
    ("relu_lrn_max_pool2d", (128, 96, 55, 55), {**LRN, **ALEX}, BOTH),
    ("relu_lrn_max_pool2d", (128, 256, 27, 27), {**LRN, **ALEX}, BOTH),
    ("relu_max_pool2d", (128, 256, 13, 13), ALEX, BOTH),
    ("dropout", (128, 4096), dict(p=0.5), ["nchw"]),
    ("relu_dropout", (128, 4096), dict(p=0.5), ["nchw"]),
]
ODD = [
    ("relu_lrn", (2, 5, 7, 9), {**LRN, "size": 3}, BOTH),
    ("relu_lrn", (3, 16, 13, 13), {**LRN, "size": 2}, BOTH),  # even window
    ("relu_lrn", (2, 12, 5, 5), {**LRN, "size": 9}, BOTH),  # wider than the channel walk takes
    ("relu_lrn", (2, 3, 4, 4), {**LRN, "size": 1}, BOTH),
    # the widest walk, 512-pixel blocks: ~20 s of CPU, a sixth of the default plan's, so in the matrix only
    *([("relu_lrn", (2, 17, 32, 32), {**LRN, "size": 16}, BOTH)] if CI_MATRIX or FULL else []),
    ("max_pool2d", (3, 16, 13, 13), {"kernel_size": 3, "stride": 2, "padding": 1}, BOTH),
    ("max_pool2d", (2, 5, 8, 8), {"kernel_size": 2, "stride": 2, "padding": 0}, BOTH),  # one window
    ("relu_lrn_max_pool2d", (2, 5, 7, 9), {**LRN, **ALEX}, BOTH),
    ("relu_lrn_max_pool2d", (2, 5, 8, 8), {**LRN, "size": 2, "kernel_size": 2, "stride": 2}, BOTH),
    ("relu_lrn_max_pool2d", (2, 12, 9, 9), {**LRN, "size": 9, **ALEX}, BOTH),
    ("dropout", (3, 17), dict(p=0.5, position=(1, 2, 40)), ["nchw"]),  # a block of a larger tensor
    ("dropout", (2, 5, 7, 9), dict(p=0.3), BOTH),
    ("relu_dropout", (3, 17), dict(p=0.5, position=(1, 2, 40)), ["nchw"]),
    ("relu_dropout", (2, 5, 7, 9), dict(p=0.5), BOTH),
]
for _op, _extra in (("max_pool2d", {}), ("relu_lrn_max_pool2d", LRN), ("relu_max_pool2d", {})):
    ODD += [
        # 3 windows per axis cover a position; padding
        (_op, (2, 3, 11, 10), {**_extra, "kernel_size": 3, "stride": 1, "padding": 1}, BOTH),
        # windows of more than 256 elements: int32 argmax
        (_op, (2, 3, 20, 19), {**_extra, "kernel_size": 17, "stride": 2, "padding": 0}, BOTH),
    ]


def plan() -> list:
    """(op, shape, kwargs, layout, dtype, targets) to capture and compile."""
    items = []
    for op, shape, kwargs, layouts in ALEXNET:
        # by default the two training dtypes on sm_90a, and for conv1's relu_lrn and fused block bfloat16
        # on sm_75 (max.NaN, used for its float32 math, and the packed bfloat16 conversions need sm_80: sm_75
        # takes the other branches) and gfx942 (NCHW only: the channels_last block takes ~100 s of CPU to
        # compile for AMD, a third of this plan; the matrix compiles it, and tests/test_targets.py its
        # forward at a small shape); float64 and the other targets come up in the odd cases' rotation
        # below (the suite must stay short)
        conv1_lrn = op.startswith("relu_lrn") and shape[1] == 96
        for layout in layouts:
            other = ((75, "gfx942") if layout == "nchw" else (75,)) if conv1_lrn else ()
            if FULL:
                pairs = [(d, MATRIX) for d in DTYPES]
            else:
                pairs = [("float32", (90,)), ("bfloat16", MATRIX if CI_MATRIX else (90, *other))]
            items += [(op, shape, kwargs, layout, d, a) for d, a in pairs]
    ops = list(dict.fromkeys(op for op, *_ in ODD))  # in order of first appearance
    turn = dict.fromkeys(ops, 0)
    for op, shape, kwargs, layouts in ODD:
        for layout in layouts:
            if FULL:
                items += [(op, shape, kwargs, layout, d, MATRIX) for d in DTYPES]
            else:  # the next (dtype, target) pair for this op: both change every turn, so an op's few
                # turns reach every dtype and as many targets as it has turns (ops start on different
                # dtypes: AlexNet's shapes above cover float32 and bfloat16 already)
                i = turn[op]
                turn[op] += 1
                d = DTYPES[(ops.index(op) + i + i // len(ROTATION)) % len(DTYPES)]
                items.append((op, shape, kwargs, layout, d, (ROTATION[i % len(ROTATION)],)))
    return items


# Runs in a fresh process without TRITON_INTERPRET: compiling needs real @triton.jit functions. NVIDIA
# targets compile through bench/tools/sass_cost.py's compile_all (registers and spills from ptxas), AMD
# targets here (the amdgcn kernel descriptor), both under a fake driver reporting the target.
_SCRIPT = textwrap.dedent(r"""
    import json, multiprocessing, re, sys, time
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    import kernels
    import kernels._common as common
    import bench.tools.sass_cost as sc

    class FakeHipDriver(sc.FakeCudaDriver):
        # a ROCm device: its own device key, so each JITFunction keeps a separate cache per target
        def __init__(self, arch):
            self.arch = arch

        def get_current_target(self):
            return GPUTarget("hip", self.arch, 64)

        def get_current_device(self):
            return self.arch

    def warm(launch, target):
        previous = driver._active
        driver.set_active(sc.FakeCudaDriver(target) if isinstance(target, int) else FakeHipDriver(target))
        try:
            return launch.fn.warmup(*launch.args, grid=launch.grid, **launch.constexprs,
                                    num_warps=launch.num_warps)
        finally:
            driver._active = previous

    def asm_ops(kernel):
        return kernel.asm["ttir"].count("tt.elementwise_inline_asm")

    JOBS = []

    def compile_hip(i):
        launch, arch = JOBS[i]
        t0 = time.perf_counter()
        try:
            kernel = warm(launch, arch)
        except Exception as e:  # reported per kernel
            return dict(name=launch.name, arch=arch, error=f"{type(e).__name__}: {e}"[-3000:])
        gcn = kernel.asm.get("amdgcn", "")
        field = lambda key: sum(int(v) for v in re.findall(rf"\.{key}:\s*(\d+)", gcn))
        # memory spills: VGPRs spilled to scratch (4 bytes each) and any scratch at all; SGPRs spilled into
        # VGPR lanes (v_writelane, no memory traffic) are reported apart
        return dict(name=launch.name, arch=arch, has_cubin=bool(kernel.asm.get("hsaco")),
                    registers=field("vgpr_count"), sgpr_spills=field("sgpr_spill_count"),
                    spill_bytes=4 * field("vgpr_spill_count") + field("private_segment_fixed_size"),
                    ptxas_ok=".vgpr_spill_count" in gcn, inline_asm=asm_ops(kernel),
                    signature=dict(kernel.src.signature),
                    aligned=[launch.fn.arg_names[k[0]] for k, v in kernel.src.attrs.items()
                             if any(a[0] == "tt.divisibility" for a in v)],
                    num_warps=launch.num_warps, compile_s=round(time.perf_counter() - t0, 3))

    t0 = time.time()
    nv, amd, captured, skipped = [], [], [], []  # (launch, targets, case)
    for op, shape, kwargs, layout, dtype, targets in json.loads(sys.argv[1]):
        fn = getattr(kernels, op, None)
        if fn is None:
            if op not in skipped:
                skipped.append(op)
            continue
        if "position" in kwargs:
            kwargs = {**kwargs, "position": tuple(kwargs["position"])}
        call = lambda x, fn=fn, kwargs=kwargs: fn(x, **kwargs)
        # captured as the launchers plan for each kind of target: sm_80 and later, each capability
        # before sm_80 (plans that differ there), AMD (torch.version.hip set, as on ROCm)
        groups = {}
        for a in targets:
            groups.setdefault("hip" if isinstance(a, str) else min(a, 80), []).append(a)
        for group, tgts in groups.items():
            platform, out = ("hip", amd) if group == "hip" else ("cuda", nv)
            torch.version.hip = "6.0" if group == "hip" else None  # what the launchers see on ROCm
            try:
                with common.compiling_for(0 if group == "hip" else group if group < 80 else 90):
                    fwd, bwd, _, _ = sc.capture(call, tuple(shape), sc.DTYPES[dtype], layout)
            finally:
                torch.version.hip = None
            for direction, ls in (("fwd", fwd), ("bwd", bwd)):
                case = dict(op=op, shape=shape, kwargs=repr(kwargs), dtype=dtype, layout=layout,
                            direction=direction, platform=platform)
                captured.append({**case, "kernels": [l.name for l in ls]})
                out += [(l, tgts, case) for l in ls]
    t1 = time.time()
    keep = ("name", "arch", "error", "has_cubin", "registers", "spill_bytes", "ptxas_ok", "stack", "local",
            "signature", "aligned", "num_warps", "occupancy_warps", "compile_s", "compile_cpu_s",
            "inline_asm", "sgpr_spills", "square_adds")
    out = []
    if nv:
        # the LRN kernels' SASS too (cuobjdump, ~0.5 s a kernel): their window sums must be fma chains
        lrn = [i for i, (l, _, _) in enumerate(nv) if l.name.startswith("relu_lrn")]
        rest = sorted(set(range(len(nv))) - set(lrn))
        results = [None] * len(nv)
        for idx, sass in ((lrn, True), (rest, False)):
            for i, rs in zip(idx, sc.compile_all([nv[i][0] for i in idx], [tuple(nv[i][1]) for i in idx],
                                                 processes=2, sass=sass)):
                results[i] = rs
        checked = {}
        for (launch, tgts, case), rs in zip(nv, results):
            for r in rs:
                if "sass" in r:
                    r["square_adds"] = sc.unfused_square_adds(r["sass"])
                if common.NO_ASM and "error" not in r:  # a cache hit: the TTIR of what was compiled
                    key = sc.spec_key(launch, r["arch"])
                    if key not in checked:
                        checked[key] = asm_ops(warm(launch, r["arch"]))
                    r["inline_asm"] = checked[key]
                out.append({**case, **{k: r[k] for k in keep if k in r}})
    if amd:
        index = {}
        for launch, tgts, _ in amd:
            for arch in tgts:
                key = (sc.spec_key(launch, 90), arch)  # the same specialisation inputs on every target
                if key not in index:
                    index[key] = len(JOBS)
                    JOBS.append((launch, arch))
        with multiprocessing.get_context("fork").Pool(2) as pool:
            done = pool.map(compile_hip, range(len(JOBS)), chunksize=1)
        for launch, tgts, case in amd:
            for arch in tgts:
                r = done[index[(sc.spec_key(launch, 90), arch)]]
                out.append({**case, **{k: r[k] for k in keep if k in r}})
    print(json.dumps(dict(captured=captured, results=out, skipped=skipped, no_asm=common.NO_ASM,
                          seconds=dict(capture=t1 - t0, compile=time.time() - t1))))
""")


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(plan())], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=6 * 3600 if FULL else 3600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _name(arch) -> str:
    return arch if isinstance(arch, str) else ("sm_90a" if arch == 90 else f"sm_{arch}")


def _where(r) -> str:
    return (f"{r['op']} {r['direction']} {tuple(r['shape'])} {r['kwargs']} {r['dtype']} {r['layout']}: "
            f"{r['name']} {_name(r['arch'])}")


def test_every_op_and_direction_launches_triton_kernels(compiled):
    missing = [c for c in compiled["captured"] if not c["kernels"]]
    assert not missing, f"no launch recorded (the op did not take its Triton path): {missing[:3]}"
    ops = {c["op"] for c in compiled["captured"]}
    assert {"relu_lrn", "max_pool2d", "relu_lrn_max_pool2d", "dropout", "relu_dropout"} <= ops
    assert set(compiled["skipped"]) <= {"relu_max_pool2d"}, compiled["skipped"]
    wanted = set(MATRIX if FULL else ROTATION)
    assert {r["arch"] for r in compiled["results"]} == wanted


def test_no_inline_asm_where_there_is_no_ptx(compiled):
    # AMD kernels, and every kernel of the build without inline asm: the TTIR holds no inline asm
    bad = [f"{_where(r)}: {r['inline_asm']} inline asm ops" for r in compiled["results"]
           if (isinstance(r["arch"], str) or compiled["no_asm"]) and r.get("inline_asm", 0)]
    assert not bad, "\n".join(bad[:10])
    if compiled["no_asm"]:
        assert all("inline_asm" in r for r in compiled["results"] if "error" not in r)


def test_every_launch_compiles(compiled):
    bad = [f"{_where(r)}: {r.get('error') or 'no cubin'}" for r in compiled["results"]
           if "error" in r or not r["has_cubin"]]
    assert not bad, "\n".join(bad[:10])


def test_compiles_the_runtime_specialisation(compiled):
    # pointers from torch's allocator are 16-byte aligned, and every kernel takes at least one: the JIT's
    # alignment hints must be there, and unit strides must have become constants somewhere
    results = [r for r in compiled["results"] if "signature" in r]
    unaligned = [_where(r) for r in results if not r["aligned"]]
    assert not unaligned, unaligned[:5]
    constant_ints = [r for r in results if any(
        t == "constexpr" and not name.isupper() for name, t in r["signature"].items())]
    assert constant_ints, "no integer argument equal to 1 was specialised to a constant"
    assert any(t == "i32" for r in results for t in r["signature"].values())


def test_no_register_spills(compiled):
    missing = [_where(r) for r in compiled["results"] if r.get("has_cubin") and not r.get("ptxas_ok")]
    assert not missing, f"ptxas printed no spill line: {missing[:3]}"
    spilling = [f"{_where(r)}: {r['spill_bytes']} bytes spilled, {r['registers']} registers"
                for r in compiled["results"] if r.get("spill_bytes")]
    total = len(compiled["results"])
    assert not spilling, f"{len(spilling)} of {total} compiles spill:\n" + "\n".join(spilling[:12])


def test_register_use_allows_two_blocks_per_sm(compiled):
    # 255 is the hardware cap; staying well under it keeps occupancy for these memory-bound kernels
    # (NVIDIA's; AMD's CDNA GPUs have 512 VGPRs a lane and report the count differently)
    heavy = [f"{_where(r)}: {r['registers']} registers" for r in compiled["results"]
             if r["dtype"] != "float64" and isinstance(r["arch"], int)
             and r.get("registers", 0) > 168]
    assert not heavy, f"{len(heavy)} compiles over 168 registers:\n" + "\n".join(heavy[:12])


def test_lrn_window_sums_are_fma_chains(compiled):
    # kernels/_jit.py's _ring_sumsq sums a window's squares as one explicit fma chain, so every LRN kernel
    # (relu_lrn's walks and tiles, the fused block's three pairs) rounds s identically and the fused block
    # equals max_pool2d(relu_lrn(x)) bit for bit on a GPU. Left to LLVM, a sum that crosses a basic block
    # compiles to FMUL + FADD (issue 19, item 3): any FADD of a square fails here.
    lrn = [r for r in compiled["results"] if r["name"].startswith("relu_lrn") and isinstance(r["arch"], int)
           and "error" not in r]
    assert lrn and all("square_adds" in r for r in lrn)
    assert {r["name"] for r in lrn} >= {"relu_lrn_fwd", "relu_lrn_bwd", "relu_lrn_max_pool2d_fwd",
                                        "relu_lrn_max_pool2d_bwd"}
    bad = [f"{_where(r)}: {r['square_adds'][0]}" for r in lrn if r["square_adds"]]
    assert not bad, f"{len(bad)} of {len(lrn)} LRN compiles add a square unfused:\n" + "\n".join(bad[:10])


def test_ptxas_is_shipped():
    import triton
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    assert os.path.exists(ptxas)
    assert re.search(r"release \d+", subprocess.run([ptxas, "--version"], capture_output=True,
                                                    text=True).stdout)
