"""Every kernel launch the ops issue compiles for sm_90a and sm_80 without a GPU, exactly as Triton's JIT
would compile it at runtime (the same integer specialisations, alignment hints, constexprs and
num_warps), and the ptxas shipped with Triton reports no register spills.

The launches are captured with ``kernels._common.recording`` (the public ops, forward and backward, on
CPU tensors) and compiled by bench/tools/sass_cost.py's machinery under a fake CUDA driver, at AlexNet's
batch-128 shapes and at small odd shapes, in both memory formats.

Compiling is what costs (0.2 s to 7 s of CPU a kernel; about 540 distinct compiles for every case in
every dtype on both targets, some 15 minutes here), so by default the test compiles a plan sized for
about a minute on 2 cores: AlexNet's shapes in float32 and bfloat16 for sm_90a, and each odd case (per
layout) in one (dtype, target) pair, the pairs taken in turn so that
all 8 combinations of float32/float16/bfloat16/float64 and sm_90a/sm_80 come up for every op.
``COMPILE_SM_FULL=1`` compiles every case in every dtype for both targets. Triton's cache
(``~/.triton/cache``, or ``TRITON_CACHE_DIR``) makes reruns much faster."""

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
ARCHS = (90, 80)
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
        # by default the two training dtypes on the target that runs them; float64 and sm_80 come up in
        # the odd cases' rotation below (the suite must stay within 10 minutes on 2 cores)
        pairs = [(d, ARCHS) for d in DTYPES] if FULL else [("float32", (90,)), ("bfloat16", (90,))]
        items += [(op, shape, kwargs, layout, d, a) for layout in layouts for d, a in pairs]
    combos = [(d, a) for a in ARCHS for d in DTYPES]
    turn = {}
    for op, shape, kwargs, layouts in ODD:
        for layout in layouts:
            if FULL:
                items += [(op, shape, kwargs, layout, d, ARCHS) for d in DTYPES]
            else:  # the next (dtype, target) pair for this op, arch alternating fastest
                i = turn.get(op, 0)
                turn[op] = i + 1
                d, a = combos[(i % 2) * 4 + (i // 2) % 4]
                items.append((op, shape, kwargs, layout, d, (a,)))
    return items


# Runs in a fresh process without TRITON_INTERPRET: compiling needs real @triton.jit functions.
_SCRIPT = textwrap.dedent(r"""
    import json, sys, time
    import kernels
    import bench.tools.sass_cost as sc

    t0 = time.time()
    launches, archs, tags, captured, skipped = [], [], [], [], []
    for op, shape, kwargs, layout, dtype, targets in json.loads(sys.argv[1]):
        fn = getattr(kernels, op, None)
        if fn is None:
            if op not in skipped:
                skipped.append(op)
            continue
        if "position" in kwargs:
            kwargs = {**kwargs, "position": tuple(kwargs["position"])}
        call = lambda x, fn=fn, kwargs=kwargs: fn(x, **kwargs)
        fwd, bwd, _, _ = sc.capture(call, tuple(shape), sc.DTYPES[dtype], layout)
        for direction, ls in (("fwd", fwd), ("bwd", bwd)):
            case = dict(op=op, shape=shape, kwargs=repr(kwargs), dtype=dtype, layout=layout,
                        direction=direction)
            captured.append({**case, "kernels": [l.name for l in ls]})
            for l in ls:
                launches.append(l)
                archs.append(tuple(targets))
                tags.append(case)
    t1 = time.time()
    results = sc.compile_all(launches, archs, processes=2, sass=False)
    keep = ("name", "arch", "error", "has_cubin", "registers", "spill_bytes", "ptxas_ok", "stack", "local",
            "signature", "aligned", "num_warps", "occupancy_warps", "compile_s", "compile_cpu_s")
    out = [{**tag, **{k: r[k] for k in keep if k in r}} for tag, rs in zip(tags, results) for r in rs]
    print(json.dumps(dict(captured=captured, results=out, skipped=skipped,
                          distinct=len({id(r) for rs in results for r in rs}),
                          seconds=dict(capture=t1 - t0, compile=time.time() - t1))))
""")


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(plan())], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _where(r) -> str:
    return (f"{r['op']} {r['direction']} {tuple(r['shape'])} {r['kwargs']} {r['dtype']} {r['layout']}: "
            f"{r['name']} sm_{r['arch']}")


def test_every_op_and_direction_launches_triton_kernels(compiled):
    missing = [c for c in compiled["captured"] if not c["kernels"]]
    assert not missing, f"no launch recorded (the op did not take its Triton path): {missing[:3]}"
    ops = {c["op"] for c in compiled["captured"]}
    assert {"relu_lrn", "max_pool2d", "relu_lrn_max_pool2d", "dropout", "relu_dropout"} <= ops
    assert set(compiled["skipped"]) <= {"relu_max_pool2d"}, compiled["skipped"]
    assert {r["arch"] for r in compiled["results"]} == {80, 90}


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
    heavy = [f"{_where(r)}: {r['registers']} registers" for r in compiled["results"]
             if r["dtype"] != "float64" and r.get("registers", 0) > 168]
    assert not heavy, f"{len(heavy)} compiles over 168 registers:\n" + "\n".join(heavy[:12])


def test_ptxas_is_shipped():
    import triton
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    assert os.path.exists(ptxas)
    assert re.search(r"release \d+", subprocess.run([ptxas, "--version"], capture_output=True,
                                                    text=True).stdout)
