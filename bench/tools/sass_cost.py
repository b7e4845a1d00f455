"""Static cost of the fused ops' kernels, read from the SASS Triton compiles for sm_90a, without a GPU.

    python bench/tools/sass_cost.py                      # AlexNet's batch-128 shapes, float32 and bfloat16
    python bench/tools/sass_cost.py --ops relu_lrn --dtypes float32 --layouts nchw --keep-sass /tmp/sass

Each op runs forward and backward on CPU tensors of the real shapes inside ``kernels._common.recording``:
the ops take their Triton path but hand every launch (kernel, grid, arguments, constexprs, num_warps) to a
callback instead of launching. Each launch is then compiled with ``JITFunction.warmup`` under a fake CUDA
driver that reports an sm_90 device, so the JIT applies exactly the specialisations a real launch gets
(integers equal to 1 become constants, integers and pointers divisible by 16 get alignment hints, integers
that fit become i32; the same constexprs, num_warps and num_stages; check with ``--debug-spec``). From the
cubin: registers, stack and local memory (``cuobjdump -res-usage``), spill bytes (the ``ptxas -v`` log of
Triton's own ptxas run, or a rerun with Triton's flags when the kernel came from Triton's cache),
occupancy, and the dynamic instruction count per program: SASS loops (a backward branch closes one)
weighted by their mean trip counts, which this report computes from each launch's arguments as the kernel
bounds its loops (``TRIPS``: a function per kernel; loops of constant count take the count in the TTIR),
nested loops multiplied, and the code of a runtime ``if`` weighted by the fraction of programs that enter
it (``if_regions``). Beside instructions per byte, the report's other limits: special-function (MUFU)
instructions per byte against that pipe's 16 lanes, waves per launch on 132 SMs, and each loop's code size
(bench/tools/README.md, "Other limits"). The result is an estimate that a GPU run (Nsight Compute's
executed instructions) must confirm.

The capture and compile machinery (``capture``, ``compile_launch``, ``compile_all``, ``analyse_sass``)
is reused by tests/test_compile_sm.py. Must run without TRITON_INTERPRET (the kernels have to be real
``JITFunction``s): run as a script, it drops TRITON_INTERPRET from the environment before Triton is
imported; imported as a module, ``capture`` raises if the kernels were defined under the interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import io
import json
import math
import multiprocessing
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") \
        and "triton" not in sys.modules:
    os.environ.pop("TRITON_INTERPRET")  # @triton.jit reads it at decoration time: drop it first

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.driver import CudaDriver  # noqa: E402
from triton.runtime import driver as _driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

import kernels  # noqa: E402
from kernels._common import Launch, recording  # noqa: E402

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
CUOBJDUMP = BIN / "cuobjdump"
PTXAS = BIN / "ptxas"

BATCH = 128
LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)
POOL = dict(kernel_size=3, stride=2, padding=0)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}

# Per SM of an H100 (sm_90) and an A100 (sm_80): registers, warps, blocks, shared memory per SM and the
# most one block may use, register allocation unit (registers per warp).
SM_LIMITS = {
    90: dict(regs=65536, warps=64, blocks=32, smem=233472, smem_block=232448, reg_unit=256),
    80: dict(regs=65536, warps=64, blocks=32, smem=167936, smem_block=166912, reg_unit=256),
}

# The budget: ~30 T thread-instructions/s (132 SMs x 4 schedulers x 32 lanes x ~1.75 GHz) against ~3.4 TB/s
# (80% of an H200's copy bandwidth), at ~70% issue efficiency: about 6 thread-instructions per byte.
TARGET_PER_BYTE = {"nchw": 6.0, "channels_last": 12.0}

# The report's other limits (bench/tools/README.md, "Other limits"):
# - SM count of an H100 SXM5 (NVIDIA H100 Tensor Core GPU Architecture whitepaper, 2022: 132 SMs; the H100
#   PCIe has 114, the H200 132): waves per launch = programs / (programs resident per SM x SM_COUNT).
SM_COUNT = 132
# - Issue lanes and special-function (MUFU: ex2, lg2, rcp, rsq, sqrt, sin, cos, tanh) lanes per clock per SM
#   on sm_90: 4 schedulers x 32 lanes; 16 results per clock (CUDA C++ Programming Guide, "Arithmetic
#   Instructions" throughput table, compute capability 9.0). One MUFU thread-instruction holds its pipe
#   as long as ISSUE_LANES / MUFU_LANES = 8 thread-instructions hold the issue slots.
ISSUE_LANES = 128
MUFU_LANES = 16
# - SASS instructions are 16 bytes each from sm_70 on (one 128-bit word with its control bits). NVIDIA
#   publishes no instruction-cache size; microbenchmarks of Volta (Jia et al. 2018, arXiv:1804.06826) found
#   ~12 KiB of L0 per scheduler and ~128 KiB of L1 instruction cache per SM. No Hopper figure is known
#   here: loops whose code is over ICACHE_FLAG_BYTES are flagged, a threshold to check with Nsight Compute
#   (stall reason "no instruction"), not a measured size.
SASS_INSTR_BYTES = 16
ICACHE_FLAG_BYTES = 32 * 1024
BUDGET = ("An H100/H200 issues about 132 SMs x 4 schedulers x 32 lanes x ~1.75 GHz = ~30 T "
          "thread-instructions/s; 80% of an H200's ~4.3 TB/s copy bandwidth is ~3.4 TB/s, so at ~70% issue "
          "efficiency a kernel that runs at memory speed may spend about 6 thread-instructions per minimal "
          "byte (H100, ~3.0 TB/s: about 8). Target: <= 6 per byte for NCHW, <= 12 for channels_last, "
          "and no spills.")


# ------------------------------------------------------------------------------------ fake driver


class FakeCudaDriver(CudaDriver):
    """Triton's CUDA driver without CUDA: reports one device of compute capability ``arch``.

    The device index is the arch itself, so that each JITFunction keeps a separate binder and kernel
    cache per target (sm_80 and sm_90a in one process)."""

    def __init__(self, arch: int = 90):  # noqa: D107 - no CUDA initialisation, on purpose
        self.arch = arch

    def get_current_target(self):
        return GPUTarget("cuda", self.arch, 32)

    def get_current_device(self):
        return self.arch

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_device_capability(self, device=None):
        return divmod(self.arch, 10)

    def get_active_torch_device(self):
        return torch.device("cpu")

    @staticmethod
    def is_active():
        return True


def check_not_interpreted(fn) -> None:
    if not isinstance(fn, JITFunction):
        raise RuntimeError(f"sass_cost: {fn!r} is not a compiled JITFunction (TRITON_INTERPRET=1 when Triton "
                           "was imported?): run in a process without TRITON_INTERPRET")


@contextlib.contextmanager
def fake_cuda(arch: int = 90):
    previous = _driver._active
    _driver.set_active(FakeCudaDriver(arch))
    try:
        yield
    finally:
        _driver._active = previous


# ---------------------------------------------------------------------------------------- capture


@dataclass(frozen=True)
class OpSpec:
    name: str
    call: object  # x -> output
    shapes: tuple  # AlexNet's (C, H, W) or (features,) at batch 128
    pool: bool = False  # output is pooled: per-output figures and the pool bytes model
    rank: int = 4


def _ops() -> dict[str, OpSpec]:
    ops = {
        "relu_lrn": OpSpec("relu_lrn", lambda x: kernels.relu_lrn(x, **LRN), ((96, 55, 55), (256, 27, 27))),
        "max_pool2d": OpSpec("max_pool2d", lambda x: kernels.max_pool2d(x, **POOL),
                             ((96, 55, 55), (256, 27, 27), (256, 13, 13)), pool=True),
        "relu_lrn_max_pool2d": OpSpec("relu_lrn_max_pool2d",
                                      lambda x: kernels.relu_lrn_max_pool2d(x, **LRN, **POOL),
                                      ((96, 55, 55), (256, 27, 27)), pool=True),
        "relu_max_pool2d": OpSpec("relu_max_pool2d", lambda x: kernels.relu_max_pool2d(x, **POOL),
                                  ((256, 13, 13),), pool=True),
        "dropout": OpSpec("dropout", lambda x: kernels.dropout(x, p=0.5), ((4096,),), rank=2),
        "relu_dropout": OpSpec("relu_dropout", lambda x: kernels.relu_dropout(x, p=0.5), ((4096,),), rank=2),
    }
    return ops


OPS = _ops()


def op_available(op: str) -> bool:
    return hasattr(kernels, op)


def capture(call, shape, dtype: torch.dtype, layout: str = "nchw", backward: bool = True):
    """Run ``call(x)`` (and its backward) on an empty CPU tensor of ``shape`` under ``recording``.

    Returns (forward launches, backward launches, input numel, output numel). The recorded ops never
    write their outputs: the backward sees garbage values, only shapes, strides and dtypes matter."""
    fmt = LAYOUTS[layout] if len(shape) == 4 else torch.contiguous_format
    x = torch.empty(shape, dtype=dtype, memory_format=fmt).requires_grad_()
    fwd, bwd = [], []
    with recording(fwd.append):
        y = call(x)
    if backward:
        dy = torch.empty_like(y)
        with recording(bwd.append):
            torch.autograd.grad(y, x, dy)
    return [slim(launch) for launch in fwd], [slim(launch) for launch in bwd], x.numel(), y.numel()


def _stand_in(t: torch.Tensor) -> torch.Tensor:
    """A 64-byte tensor of t's dtype whose address has t's alignment modulo 16: all the JIT looks at."""
    n = max(1, 64 // t.element_size())
    base = torch.empty(n + 16, dtype=t.dtype)
    shift = (t.data_ptr() - base.data_ptr()) % 16
    if shift % t.element_size():
        raise RuntimeError(f"sass_cost: cannot reproduce the alignment of a {t.dtype} tensor")
    first = shift // t.element_size()
    return base[first:first + n]


def slim(launch: Launch) -> Launch:
    """The launch with its tensors replaced by small stand-ins of the same dtype and alignment (the JIT
    specialises pointers on those only), checked to give the same specialisation."""
    check_not_interpreted(launch.fn)
    args = tuple(_stand_in(a) if isinstance(a, torch.Tensor) else a for a in launch.args)
    small = dataclasses.replace(launch, args=args)
    if spec_key(small, 90) != spec_key(launch, 90):
        raise RuntimeError(f"sass_cost: stand-in tensors change the specialisation of {launch.name}")
    return small


# ---------------------------------------------------------------------------------------- compile


def _ptxas_flags() -> list[str]:
    """The ptxas flags the installed Triton uses (so that spills are the real build's)."""
    import inspect

    from triton.backends.nvidia import compiler as nvc
    src = inspect.getsource(nvc)
    flags = ["-lineinfo", "-v"]
    if "regAllocOptLevel=2" in src:
        flags.append("--regAllocOptLevel=2")
    return flags


_PTXAS_FLAGS = None


def spec_key(launch: Launch, arch: int) -> str:
    """The JIT's own cache key for this launch on ``arch``: equal keys compile to the same kernel."""
    with fake_cuda(arch):
        binder = launch.fn.device_caches[arch][4]
        _, specialization, options = binder(*launch.args, **launch.constexprs, num_warps=launch.num_warps)
    key = [x if not hasattr(x, "cache_key") else x.cache_key for x in specialization]
    return f"{launch.fn.fn.__module__}.{launch.fn.fn.__qualname__}|{arch}|{key}|{options}"


def _run_tool(args: list) -> str:
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout + out.stderr


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (ptxas): compile cost whatever the load."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _sm_name(arch: int) -> str:
    try:
        from triton.backends.nvidia.compiler import sm_arch_from_capability
        return sm_arch_from_capability(arch)
    except ImportError:  # pragma: no cover - older Triton
        return f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"


def _side_cache(kernel):
    try:
        import hashlib

        from triton.runtime.cache import get_cache_manager
        return get_cache_manager(hashlib.sha256(f"{kernel.hash}-sass-cost".encode()).hexdigest())
    except Exception:  # noqa: BLE001 - a cache is an optimisation only
        return None


def _cache_get(cache, name: str) -> str | None:
    path = cache.get_file(name) if cache is not None else None
    return Path(path).read_text() if path else None


def _cache_put(cache, text: str, name: str) -> None:
    if cache is not None:
        with contextlib.suppress(Exception):
            cache.put(text, name, binary=False)


def _parse_ptxas_log(log: str) -> dict | None:
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if not spills:
        return None
    regs = re.findall(r"Used (\d+) registers", log)
    return dict(spill_stores=sum(int(a) for a, _ in spills), spill_loads=sum(int(b) for _, b in spills),
                ptxas_registers=max((int(r) for r in regs), default=None))


def _warmup(launch: Launch, arch: int):
    """Compile through the JIT; returns (compiled kernel, ptxas -v log of that compile or None). Triton
    runs ptxas -v itself and prints its log with ``knobs.nvidia.dump_ptxas_log``: kept when it ran (a
    Triton cache miss)."""
    knobs = getattr(triton, "knobs", None)
    nv = getattr(knobs, "nvidia", None)
    can_dump = nv is not None and hasattr(nv, "dump_ptxas_log")
    buf = io.StringIO()
    previous = nv.dump_ptxas_log if can_dump else None
    try:
        if can_dump:
            nv.dump_ptxas_log = True
        with fake_cuda(arch), contextlib.redirect_stdout(buf):
            kernel = launch.fn.warmup(*launch.args, grid=launch.grid, **launch.constexprs,
                                      num_warps=launch.num_warps)
    finally:
        if can_dump:
            nv.dump_ptxas_log = previous
    return kernel, (buf.getvalue() or None)


def compile_launch(launch: Launch, arch: int = 90, sass: bool = True, keep_text: bool = False) -> dict:
    """Compile one recorded launch for ``arch`` as the JIT would at runtime and read its cubin.

    Returns registers (``cuobjdump -res-usage``), spill bytes (ptxas -v: the log of Triton's own ptxas
    run, or a rerun with Triton's flags on a cache hit), local memory, shared memory, occupancy, the
    compiled signature and alignment attributes, and with ``sass`` the SASS analysis (``analyse_sass``;
    disassembling costs about 0.5 s a kernel)."""
    global _PTXAS_FLAGS
    check_not_interpreted(launch.fn)
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    kernel, log = _warmup(launch, arch)
    t_compile, cpu_compile = time.perf_counter() - t0, _cpu_seconds() - cpu0
    cubin = kernel.asm.get("cubin")
    result = dict(name=launch.name, arch=arch, function=kernel.name, has_cubin=bool(cubin),
                  num_warps=kernel.metadata.num_warps, num_stages=kernel.metadata.num_stages,
                  shared=kernel.metadata.shared, constexprs=launch.constexprs,
                  signature=dict(kernel.src.signature),
                  aligned=[launch.fn.arg_names[k[0]] for k, v in kernel.src.attrs.items()
                           if any(a[0] == "tt.divisibility" for a in v)],
                  grid=list(launch.grid), trips=list(kernel_trips(launch).loops),
                  compile_s=round(t_compile, 3), compile_cpu_s=round(cpu_compile, 3))
    if not cubin:
        return result
    # the ptxas log and the SASS are kept beside Triton's cache entry: a rerun needs neither ptxas nor
    # the disassembler (~0.5 s a kernel)
    cache = _side_cache(kernel)
    if log:
        _cache_put(cache, log, "ptxas_v.log")
    else:
        log = _cache_get(cache, "ptxas_v.log")
    ptxas = _parse_ptxas_log(log) if log else None
    text = _cache_get(cache, "sass.txt") if sass else None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        res = _run_tool([CUOBJDUMP, "-res-usage", path])
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", res)
        result.update(registers=int(m.group(1)), stack=int(m.group(2)), local=int(m.group(4)))
        if sass and text is None:
            text = _run_tool([CUOBJDUMP, "-sass", path])
            _cache_put(cache, text, "sass.txt")
        if ptxas is None:
            if _PTXAS_FLAGS is None:
                _PTXAS_FLAGS = _ptxas_flags()
            ptx = Path(tmp) / "k.ptx"
            ptx.write_text(kernel.asm["ptx"])
            fmad = [] if kernel.metadata.enable_fp_fusion else ["--fmad=false"]
            log = _run_tool([PTXAS, *_PTXAS_FLAGS, *fmad, f"--gpu-name={_sm_name(arch)}", ptx, "-o",
                             os.devnull])
            ptxas = _parse_ptxas_log(log)
            if ptxas is not None:
                _cache_put(cache, log, "ptxas_v.log")
    result["ptxas_ok"] = ptxas is not None
    result.update(ptxas or {})
    # ptxas's own count; if it printed none, the stack frame and local memory of a thread (which would
    # hold any spill; cuobjdump counts spill space as STACK)
    result["spill_bytes"] = (result["spill_stores"] + result["spill_loads"] if ptxas
                             else result["stack"] + result["local"])
    result["occupancy_warps"] = occupancy_warps(result["registers"], result["num_warps"], result["shared"],
                                                arch)
    if sass:  # analysed per launch (``analyse_launch``): launches that share a kernel differ in trips
        result["sass"] = text
        result["ttir"] = kernel.asm.get("ttir")
    if keep_text:
        result["ptx"] = kernel.asm["ptx"]
    return result


def analyse_launch(launch: Launch, compiled: dict) -> dict:
    """``analyse_sass`` of the launch's compiled kernel with the trips of its own arguments and grid."""
    trips = kernel_trips(launch)
    a = analyse_sass(compiled["sass"], trips.loops, launch.num_warps, compiled.get("ttir"), trips.ifs)
    a.update(grid=list(launch.grid), trips=list(trips.loops), if_fractions=list(trips.ifs))
    return a


def occupancy_warps(registers: int, num_warps: int, shared: int, arch: int = 90) -> int:
    """Resident warps per SM: the tightest of registers, warps, blocks and shared memory."""
    lim = SM_LIMITS.get(arch, SM_LIMITS[90])
    per_warp = math.ceil(max(registers, 1) * 32 / lim["reg_unit"]) * lim["reg_unit"]
    blocks = min(lim["regs"] // per_warp // num_warps, lim["warps"] // num_warps, lim["blocks"])
    if shared:
        blocks = 0 if shared > lim["smem_block"] else min(blocks, lim["smem"] // (shared + 1024))
    return blocks * num_warps


def waves(programs: int, occupancy: int, num_warps: int, sm_count: int = SM_COUNT) -> tuple[int, float]:
    """(programs resident per SM, waves): ``programs`` over the programs all SMs hold at once, with
    ``occupancy`` resident warps per SM (``occupancy_warps``). 1.48 waves: the second wave is half full, so
    about a quarter of the SMs' time at the end runs nothing (programs of equal length)."""
    per_sm = occupancy // num_warps
    return per_sm, (programs / (per_sm * sm_count) if per_sm else math.inf)


def binding_limit(per_byte: float, mufu_per_byte: float) -> tuple[float, str]:
    """(MUFU's issue-slot equivalent per byte, the binding limit "issue" or "MUFU"): the special-function
    pipe takes MUFU_LANES thread-instructions a clock per SM against ISSUE_LANES issued."""
    equiv = mufu_per_byte * ISSUE_LANES / MUFU_LANES
    return equiv, ("MUFU" if equiv > per_byte else "issue")


# Worker state for the fork pool: the launches are inherited, not pickled (tensors of 100+ MB).
_JOBS: list = []


def _work(i: int) -> dict:
    launch, arch, sass, keep_text = _JOBS[i]
    try:
        return compile_launch(launch, arch, sass, keep_text)
    except Exception as e:  # noqa: BLE001 - reported per kernel, the caller decides
        return dict(name=launch.name, arch=arch, error=f"{type(e).__name__}: {e}"[-3000:])


def _indexed_work(i: int) -> tuple[int, dict]:
    return i, _work(i)


def _progress(log, done: int, total: int, r: dict) -> None:
    if log is not None:
        what = (f"ERROR {r['error'][:200]}" if "error" in r
                else f"{r.get('compile_s', 0):.1f} s ({r.get('compile_cpu_s', 0):.1f} s CPU)")
        log(f"  [{done}/{total}] {r['name']} sm_{r['arch']}: {what}")


def compile_all(launches: list[Launch], archs=(90,), processes: int = 2, sass: bool = True,
                keep_text: bool = False, log=None) -> list[list[dict]]:
    """Compile each launch for each arch, each distinct specialisation once, in a fork pool.

    ``archs``: the compute capabilities for every launch (``(90, 80)``), or one such tuple per launch.
    Returns, per launch, one result per arch (in that order). ``log``: called with a line per finished
    compile."""
    global _JOBS
    per_launch = [tuple(archs)] * len(launches) if archs and isinstance(archs[0], int) else \
        [tuple(a) for a in archs]
    keys = [[spec_key(launch, arch) for arch in a] for launch, a in zip(launches, per_launch)]
    unique: dict[str, int] = {}
    jobs = []
    for launch, a, ks in zip(launches, per_launch, keys):
        for arch, key in zip(a, ks):
            if key not in unique:
                unique[key] = len(jobs)
                jobs.append((launch, arch, sass, keep_text))
    _JOBS = jobs
    if processes > 1 and len(jobs) > 1:
        # larger jobs (more arguments, the LRN kernels) first, so the pool's tail is short
        order = sorted(range(len(jobs)), key=lambda i: -len(jobs[i][0].args))
        done = {}
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            for i, r in pool.imap_unordered(_indexed_work, order):
                done[i] = r
                _progress(log, len(done), len(jobs), r)
        results = [done[i] for i in range(len(jobs))]
    else:
        results = []
        for i in range(len(jobs)):
            results.append(_work(i))
            _progress(log, i + 1, len(jobs), results[-1])
    _JOBS = []
    return [[results[unique[k]] for k in ks] for ks in keys]


# ------------------------------------------------------------------------------- trip counts
# How often each runtime loop of a kernel runs, computed here from the launch's own arguments as the
# kernel computes its loop bounds, so that no kernel carries code for this report. One function per
# kernel (module.name), given the launch's arguments by parameter name (constexprs included) and its
# grid. It returns the mean trips per program of the kernel's runtime loops, outer first in source order
# (nested ones per trip of the enclosing loop; loops of constant count are read from the TTIR), and for
# each runtime ``if`` (an ``scf.if`` in the TTIR, in source order) the fraction of programs that enter it
# (``if_regions`` finds its code in the SASS). A kernel without a function has neither.


@dataclass(frozen=True)
class Trips:
    loops: tuple = ()  # mean trips per program of each runtime loop
    ifs: tuple = ()  # fraction of programs that enter each runtime if


TRIPS = {}


def _trips_of(*kernels):
    def register(f):
        for k in kernels:
            TRIPS[f"kernels.{k}"] = f
        return f
    return register


def kernel_trips(launch: Launch) -> Trips:
    """The launch's ``Trips``, from its kernel's function in ``TRIPS``."""
    fn = getattr(launch.fn, "fn", launch.fn)
    f = TRIPS.get(f"{fn.__module__}.{fn.__name__}")
    if f is None:
        return Trips()
    args = {**dict(zip(getattr(launch.fn, "arg_names", ()), launch.args)), **launch.constexprs}
    return f(args, launch.grid)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _tdiv(a: int, b: int) -> int:
    """a // b rounded toward zero, as Triton divides signed integers."""
    return int(a / b) if a < 0 else a // b


def _chunk_mean(c: int, chunk: int, loops_of, step: int | None = None) -> tuple:
    """Mean of each loop's trips over a walk's channel chunks [c0, min(c0 + chunk, c)), c0 every ``step``
    (``chunk``) channels: every chunk runs in as many programs. ``loops_of(c0, c_end)``: a chunk's trips."""
    per_chunk = [loops_of(c0, min(c0 + chunk, c)) for c0 in range(0, c, step or chunk)]
    return tuple(sum(v) / len(per_chunk) for v in zip(*per_chunk))


@_trips_of("lrn._lrn_fwd_walk_kernel")
def _lrn_fwd_walk(a, grid):
    # bound-free groups [1, g1), checked groups [g1, n_g) of each chunk of CHUNK channels
    c, size = a["C"], a["SIZE"]

    def loops_of(c0, c_end):
        n_g = _cdiv(c_end - c0 + size - 1, size)
        g1 = min(max(min(_tdiv(c_end - c0 - 1, size), _tdiv(c - c0 + size // 2 - size, size)) + 1, 1), n_g)
        return g1 - 1, n_g - g1
    return Trips(_chunk_mean(c, a["CHUNK"], loops_of))


@_trips_of("lrn._lrn_bwd_walk_kernel")
def _lrn_bwd_walk(a, grid):
    # bound-free groups [2, g1), checked groups [max(g1, 2), n_g)
    c, size = a["C"], a["SIZE"]

    def loops_of(c0, c_end):
        n_g = _cdiv(c_end - c0 + 2 * size - 2, size)
        g1 = min(max(min(_tdiv(c - c0 - 1, size), _tdiv(c_end - c0 + size - 2, size)) + 1, 2), n_g)
        return max(g1 - 2, 0), max(n_g - max(g1, 2), 0)
    return Trips(_chunk_mean(c, a["CHUNK"], loops_of))


def _lrn_cl_walk(a, backward: bool) -> Trips:
    # unrolled main-loop trips, remainder steps, and (chunked walks) the clamped tail's steps
    c, size, vec, unroll, chunk = a["C"], a["SIZE"], a["VEC"], a["UNROLL"], a["CHUNK"]
    lo, hi = size // 2, size - 1 - size // 2
    lag = _cdiv(hi, vec) * vec + (_cdiv(lo, vec) * vec if backward else 0)  # D, or DA + DB

    def loops_of(c0, c_end):
        n_ok = (max(min(c_end, c - lag), c0) - c0) // vec  # steps whose loads lie in [0, C)
        return n_ok // unroll, n_ok % unroll, (c_end - c0) // vec - n_ok
    return Trips(_chunk_mean(c, chunk, loops_of, step=c if a["WHOLE"] else chunk)[:2 if a["WHOLE"] else 3])


@_trips_of("lrn._relu_lrn_cl_fwd_kernel")
def _lrn_cl_fwd_walk(a, grid):
    return _lrn_cl_walk(a, backward=False)


@_trips_of("lrn._relu_lrn_cl_bwd_kernel")
def _lrn_cl_bwd_walk(a, grid):
    return _lrn_cl_walk(a, backward=True)


@_trips_of("block._patch_fwd_kernel", "block._patch_bwd_kernel")
def _block_patch_walk(a, grid):
    # the main loop's groups of SIZE channels (L per chunk, LL in the last), and the last chunk's
    # epilogue (`if last`): 1 chunk in n_cb
    n_cb, size = a["n_cb"], a["SIZE"]
    return Trips(loops=(((n_cb - 1) * a["L"] + a["LL"]) / size / n_cb,), ifs=(1 / n_cb,))


@_trips_of("block._pool_fwd_kernel")
def _block_tile_fwd(a, grid):
    return Trips((a["KH"], a["KW"], a["size"]))  # window rows, columns, then each one's LRN window


@_trips_of("block._pool_bwd_kernel")
def _block_tile_bwd(a, grid):
    # the SIZE channels c' whose windows hold c, each one's LRN window, and the pooling windows that can
    # hold a pixel (rows, columns)
    return Trips((a["size"], a["size"], _cdiv(a["KH"], a["SH"]), _cdiv(a["KW"], a["SW"])))


@_trips_of("block_cl._cl_fwd_kernel")
def _block_cl_fwd(a, grid):
    return Trips((a["OH"] / grid[1],))  # a walk's pooled rows: OH over the grid's second axis


@_trips_of("block_cl._cl_bwd_kernel")
def _block_cl_bwd(a, grid):
    return Trips((a["n_blocks"],))  # block rows per walk


@_trips_of("pool._pool_fwd_kernel", "pool._pool_bwd_block_kernel")
def _pool_rows(a, grid):
    return Trips((a["OH"],))  # a lane walks the pooled rows


@_trips_of("pool._pool_bwd_gather_kernel")
def _pool_gather(a, grid):
    return Trips((a["H"],))  # a lane walks the input rows


# ------------------------------------------------------------------------------------ SASS analysis

_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")


@dataclass
class Instr:
    addr: int
    pred: str
    opcode: str
    operands: str


@dataclass
class Loop:
    start: int
    end: int  # address of the closing backward branch
    depth: int = 0
    trips: float | None = None

    def contains(self, other: Loop) -> bool:
        return self.start <= other.start and other.end <= self.end and (self.start, self.end) != (
            other.start, other.end)


def parse_sass(text: str) -> list[Instr]:
    """The instructions of one function's SASS (cuobjdump -sass), NOP padding and the final self-branch
    removed."""
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        body = m.group(2).strip()
        pred = ""
        if body.startswith("@"):
            pred, _, body = body.partition(" ")
        opcode, _, operands = body.strip().partition(" ")
        out.append(Instr(int(m.group(1), 16), pred, opcode, operands.strip()))
    while out and out[-1].opcode == "NOP":
        out.pop()
    if out and out[-1].opcode.startswith("BRA") and _branch_target(out[-1]) == out[-1].addr:
        out.pop()
    return out


def _branch_target(ins: Instr) -> int | None:
    m = re.match(r"(?:`\()?\s*(0x[0-9a-f]+)", ins.operands.split(",")[-1].strip()) if ins.operands else None
    if m is None:
        m = re.search(r"(0x[0-9a-f]+)", ins.operands)
    return int(m.group(1), 16) if m else None


def find_loops(instrs: list[Instr]) -> list[Loop]:
    """Loops as [target, backward branch]; branches back to one target are one loop. Sorted outer first
    (by start, then longest), i.e. in source order for properly nested loops."""
    ends: dict[int, int] = {}
    for ins in instrs:
        if ins.opcode.startswith("BRA"):
            t = _branch_target(ins)
            if t is not None and t <= ins.addr:
                ends[t] = max(ends.get(t, t), ins.addr)
    return sorted((Loop(s, e) for s, e in ends.items()), key=lambda lp: (lp.start, -lp.end))


def _registers(operand: str) -> list[str]:
    """The registers an operand names: "-|R12.reuse|" -> ["R12"]; a packed pair "R66.F32x2.HI_LO" (sm_100's
    FADD2, FMUL2, FFMA2) -> ["R66", "R67"]; anything else -> []."""
    m = re.fullmatch(r"[-|]*(R\d+)(\.reuse)?(\.F32x2[.A-Z_]*)?(\.reuse)?\|?", operand.strip())
    if not m:
        return []
    n = int(m.group(1)[1:])
    return [f"R{n}", f"R{n + 1}"] if m.group(3) else [f"R{n}"]


def _written(ins: Instr) -> list[str]:
    """The registers an instruction writes: its first operand, widened by .64/.128/.WIDE or packed pairs."""
    regs = _registers(ins.operands.split(",")[0]) if ins.operands else []
    if not regs:
        return []
    wide = 4 if ".128" in ins.opcode else 2 if (".64" in ins.opcode or ".WIDE" in ins.opcode
                                                or ".F32x2" in ins.operands) else 1
    n = int(regs[0][1:])
    return [f"R{n + i}" for i in range(max(wide, len(regs)))]


def unfused_square_adds(text: str) -> list[str]:
    """FADDs (FADD2) that add a square (the result of ``FMUL Rd, Ra, Ra``): a window's sum of squares left to
    LLVM's contraction instead of kernels/_jit.py's fma chain, which would round s differently from the
    other LRN kernels. Each source is taken from its latest earlier write in address order; where a loop
    holds the FADD, the write lies before the loop and the loop writes the register again after the FADD,
    the value is loop-carried and the source unknown: not reported."""
    instrs = parse_sass(text)
    loops = find_loops(instrs)
    written = [_written(ins) for ins in instrs]
    writes: dict[str, list[int]] = {}
    for ins, regs in zip(instrs, written):
        for r in regs:
            writes.setdefault(r, []).append(ins.addr)
    last: dict[str, Instr] = {}
    found = []
    for ins, regs in zip(instrs, written):
        if ins.opcode.split(".")[0] in ("FADD", "FADD2"):
            for src in [r for o in ins.operands.split(",")[1:] for r in _registers(o)]:
                d = last.get(src)
                if d is None or d.opcode.split(".")[0] not in ("FMUL", "FMUL2"):
                    continue
                a = [_registers(o) for o in d.operands.split(",")]
                if not (len(a) >= 3 and a[1] and a[1] == a[2]):
                    continue
                if any(lp.start <= ins.addr <= lp.end and d.addr < lp.start
                       and any(ins.addr < w <= lp.end for w in writes[src]) for lp in loops):
                    continue
                found.append(f"{ins.addr:#06x} {ins.opcode} {ins.operands} adds "
                             f"{d.addr:#06x} {d.opcode} {d.operands}")
        for r in regs:
            last[r] = ins
    return found


def _mem_width(opcode: str) -> int:
    parts = opcode.split(".")[1:]
    for p in parts:
        if p in ("64", "128"):
            return int(p)
        if p in ("U8", "S8"):
            return 8
        if p in ("U16", "S16"):
            return 16
    return 32


_MEMOPS = {"LDG", "STG", "LDS", "STS", "LD", "ST", "ATOMG", "RED"}


def _unroll_factor(a: list[Instr], b: list[Instr]) -> int | None:
    """If loop body ``a`` looks like body ``b`` repeated U >= 2 times (same memory opcodes, U times as
    many of each), return U."""
    ca = Counter(i.opcode for i in a if i.opcode.split(".")[0] in _MEMOPS)
    cb = Counter(i.opcode for i in b if i.opcode.split(".")[0] in _MEMOPS)
    if not cb or set(ca) != set(cb):
        return None
    ratios = {ca[k] / cb[k] for k in cb}
    if len(ratios) == 1:
        u = ratios.pop()
        if u >= 2 and float(u).is_integer():
            return int(u)
    return None


@dataclass
class SrcLoop:
    depth: int
    const: float | None  # trip count when the bounds are constants, else None (a runtime loop)
    trips: float | None = None


_FOR = re.compile(r"scf\.for %\S+ = (%[\w.]+) to (%[\w.]+) step (%[\w.]+)")


def source_loops(ttir: str) -> list[SrcLoop]:
    """The kernel's loops after Triton inlined its helpers (scf.for / scf.while in the TTIR), outer first
    in source order, with their trip count where the bounds are constants."""
    consts = {m.group(1): int(m.group(2)) for m in
              re.finditer(r"(%[\w.]+) = arith\.constant (-?\d+) : i(?:32|64)", ttir)}
    loops, stack = [], []
    for line in ttir.splitlines():
        if "scf.for " not in line and "scf.while " not in line:
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1] >= indent:
            stack.pop()
        const = None
        m = _FOR.search(line)
        if m and all(v in consts for v in m.groups()):
            lb, ub, st = (consts[v] for v in m.groups())
            const = float(max(0, -(-(ub - lb) // st))) if st > 0 else None
        loops.append(SrcLoop(len(stack), const))
        stack.append(indent)
    return loops


def assign_source_trips(src: list[SrcLoop], declared, notes: list[str]) -> bool:
    """Give each source loop its trip count: the declared ones (``kernel_trips``: runtime loops in
    source order) and the constant ones. Returns False where the declaration does not fit the loops."""
    declared = [float(t) for t in declared]
    runtime = [lp for lp in src if lp.const is None]
    for lp in src:
        lp.trips = lp.const
    if len(declared) == len(src):
        for lp, t in zip(src, declared):
            if lp.const is not None and lp.const != t:
                notes.append(f"declared {t:g} trips for a loop of constant {lp.const:g}: used {lp.const:g}")
            else:
                lp.trips = t
        return True
    if len(declared) == len(runtime):
        for lp, t in zip(runtime, declared):
            lp.trips = t
        return True
    no_ones = [t for t in declared if t != 1]
    if len(no_ones) == len(runtime):
        for lp, t in zip(runtime, no_ones):
            lp.trips = t
        notes.append("declared 1-trip loops were folded away (their bound was specialised to 1)")
        return True
    for lp, t in zip(runtime, declared):
        lp.trips = t
    for lp in runtime[len(declared):]:
        lp.trips = 1.0
    notes.append(f"the kernel has {len(runtime)} runtime loops (+{len(src) - len(runtime)} constant), "
                 f"the launch declares {len(declared)} trips {tuple(declared)}: runtime loops without a "
                 "declared trip counted once" if len(runtime) > len(declared) else
                 f"the kernel has {len(runtime)} runtime loops, the launch declares {len(declared)} trips "
                 f"{tuple(declared)}: the first ones used")
    return False


def source_ifs(ttir: str) -> int:
    """How many runtime ``if``s (``scf.if``) the kernel has outside its loops and other ifs."""
    count, stack = 0, []  # indents of the open loops and ifs
    for line in ttir.splitlines():
        words = line.split()
        if not ({"scf.for", "scf.while", "scf.if"} & set(words[:3] + words[2:4])):
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1] >= indent:
            stack.pop()
        if "scf.if" in words[:3] + words[2:4] and not stack:
            count += 1
        stack.append(indent)
    return count


def if_regions(instrs: list[Instr], loops: list[Loop]) -> list[tuple[int, int]]:
    """The code of each runtime ``if`` outside the loops, as ptxas lays it out: (first, last address).
    Either the code a conditional forward branch skips (``@!P BRA target``: up to the target), or the
    code after a conditional EXIT (``@!P EXIT``: programs that do not take the if end there) up to the
    next unconditional EXIT. Not an if's: such code inside a loop, code that holds a loop (a loop's
    zero-trip guard), and code inside an earlier region (an if's own inner branches)."""
    regions = []
    for n, ins in enumerate(instrs):
        if not ins.pred:
            continue
        if ins.opcode.startswith("BRA"):
            target = _branch_target(ins)
            if target is None or target <= ins.addr:
                continue
            first, last = ins.addr + SASS_INSTR_BYTES, target - SASS_INSTR_BYTES
        elif ins.opcode == "EXIT":
            last = next((j.addr for j in instrs[n + 1:] if j.opcode == "EXIT" and not j.pred), None)
            if last is None:
                continue
            first = ins.addr + SASS_INSTR_BYTES
        else:
            continue
        if any(lp.start <= ins.addr <= lp.end or first <= lp.start <= last for lp in loops):
            continue
        if regions and regions[-1][0] <= first <= regions[-1][1]:
            continue
        regions.append((first, last))
    return regions


def _depths(loops: list[Loop]) -> None:
    for lp in loops:
        lp.depth = sum(1 for o in loops if o.contains(lp))


def _has_global_mem(body: list[Instr]) -> bool:
    return any(i.opcode.split(".")[0] in ("LDG", "STG", "ATOMG", "RED") for i in body)


def map_loops(instrs: list[Instr], loops: list[Loop], src: list[SrcLoop], notes: list[str]) -> bool:
    """Give each SASS loop the trip count of the source loop it compiles. True when they map one-to-one
    with the same nesting; otherwise a best effort, explained in ``notes``:

    - more SASS loops than source loops: adjacent sibling loops whose bodies hold the same memory
      instructions, one U times as many as the other, are read as one loop unrolled U times plus its
      remainder loop (floor(n / U) and n - U * floor(n / U) trips); then surplus loops without any
      global load or store are read as an unswitched copy of a nest (LLVM's version for programs whose
      lanes are all masked off, which runs instead of the main nest) and get 0 trips;
    - fewer: constant-count innermost loops are taken as fully unrolled."""
    _depths(loops)
    if len(loops) == len(src):
        for lp, s in zip(loops, src):
            lp.trips = s.trips
        if [lp.depth for lp in loops] != [s.depth for s in src]:
            notes.append(f"SASS loop nesting {[lp.depth for lp in loops]} differs from the source's "
                         f"{[s.depth for s in src]}")
            return False
        return True
    body = {id(lp): [i for i in instrs if lp.start <= i.addr <= lp.end] for lp in loops}
    notes.append(f"{len(loops)} SASS loops for {len(src)} source loops")
    if len(loops) > len(src):
        groups, i = [], 0
        while i < len(loops):
            lp, nxt = loops[i], loops[i + 1] if i + 1 < len(loops) else None
            if nxt is not None and nxt.depth == lp.depth and not lp.contains(nxt):
                u = _unroll_factor(body[id(lp)], body[id(nxt)])
                u2 = None if u else _unroll_factor(body[id(nxt)], body[id(lp)])
                if u or u2:
                    groups.append((lp, nxt, u) if u else (nxt, lp, u2))
                    i += 2
                    continue
            groups.append((lp,))
            i += 1
        extra = []
        if len(groups) > len(src):
            memless = [g for g in groups if len(g) == 1 and not _has_global_mem(body[id(g[0])])]
            while len(groups) > len(src) and memless:
                g = memless.pop()  # the last ones first: LLVM puts the copies after the main nest
                groups.remove(g)
                extra.append(g[0])
        if len(groups) == len(src):
            for g, s in zip(groups, src):
                if len(g) == 1:
                    g[0].trips = s.trips
                    continue
                main, rem, u = g
                main.trips = float(math.floor(s.trips / u))
                rem.trips = s.trips - u * main.trips
                notes.append(f"loops at {hex(main.start)} and {hex(rem.start)} read as one loop unrolled "
                             f"x{u} plus its remainder ({main.trips:g} + {rem.trips:g} of {s.trips:g} trips)")
            for lp in extra:
                lp.trips = 0.0
            if extra:
                where = ", ".join(hex(lp.start) for lp in sorted(extra, key=lambda x: x.start))
                notes.append(f"loops at {where} hold no global load or store: read as an unswitched copy "
                             "of a loop nest that runs instead of the main one (for fully masked programs), "
                             "not counted")
            depths = [min(lp.depth for lp in g[:2]) for g in groups]
            if depths != [s.depth for s in src]:
                notes.append(f"nesting {depths} differs from the source's {[s.depth for s in src]}")
            return False
    else:
        leaves = [j for j, s in enumerate(src) if s.const is not None
                  and not (j + 1 < len(src) and src[j + 1].depth > s.depth)]
        if len(src) - len(leaves) == len(loops):
            kept = [s for j, s in enumerate(src) if j not in leaves]
            for lp, s in zip(loops, kept):
                lp.trips = s.trips
            notes.append(f"{len(leaves)} constant-count innermost loops read as fully unrolled")
            return False
    for lp, s in zip(loops, src):
        lp.trips = s.trips
    for lp in loops[len(src):]:
        lp.trips = 1.0
        notes.append(f"SASS loop at {hex(lp.start)} has no source loop: counted once per enclosing trip")
    if len(loops) < len(src):
        notes.append(f"source loops {len(loops)}.. have no SASS loop: their trips are not applied")
    return False


def analyse_sass(sass: str, trips, num_warps: int, ttir: str | None = None, ifs=()) -> dict:
    """Dynamic warp-instructions per program, and global loads/stores per program, from the SASS and
    the launch's trip counts (``trips``: runtime loops, outer first, in source order; ``ifs``: the fraction
    of programs that enter each runtime if outside the loops, see ``if_regions``). With the TTIR, loops of
    constant count get their count and the declaration is checked against the kernel's loops and ifs;
    without it, the declared trips are taken as all the loops there are."""
    instrs = parse_sass(sass)
    loops = find_loops(instrs)
    notes: list[str] = []
    # code reached only by CALL (subroutines placed after the main body): not weighted
    calls = [_branch_target(i) for i in instrs if i.opcode.startswith("CALL")]
    sub_start = min((t for t in calls if t is not None), default=None)
    main = [i for i in instrs if sub_start is None or i.addr < sub_start]
    if sub_start is not None:
        notes.append(f"{len(instrs) - len(main)} instructions in subroutines (called by "
                     f"{len(calls)} CALLs) not counted")
        loops = [lp for lp in loops if lp.start < sub_start]
    if ttir is not None:
        src = source_loops(ttir)
    else:
        src = [SrcLoop(0, None) for _ in trips]  # depth unknown: checked by count only
    declared_ok = assign_source_trips(src, trips, notes)
    if ttir is None:
        _depths(loops)
        for s, lp in zip(src, loops):
            s.depth = lp.depth
    mapped_ok = map_loops(main, loops, src, notes)
    # the declared runtime ifs: each region's code weighted by the fraction of programs that enter it,
    # where the SASS shows as many regions as the TTIR has ifs (else counted for every program)
    regions = if_regions(main, loops) if ifs else []
    n_ifs = source_ifs(ttir) if ttir is not None else len(ifs)
    if ifs and not (len(regions) == len(ifs) == n_ifs):
        notes.append(f"the launch declares {len(ifs)} ifs, the TTIR has {n_ifs} and the SASS {len(regions)} "
                     "regions: every if counted for every program")
        mapped_ok, regions = False, []
    weights = {}
    for ins in main:
        w = 1.0
        for lp in loops:
            if lp.start <= ins.addr <= lp.end:
                w *= lp.trips if lp.trips is not None else 1.0
        for (first, last), fraction in zip(regions, ifs):
            if first <= ins.addr <= last:
                w *= fraction
        weights[ins.addr] = w
    warp_instr = sum(weights[i.addr] for i in main)
    loads, stores, mufu = Counter(), Counter(), Counter()
    for ins in main:
        family = ins.opcode.split(".")[0]
        if family == "LDG":
            loads[ins.opcode] += weights[ins.addr]
        elif family == "STG":
            stores[ins.opcode] += weights[ins.addr]
        elif family == "MUFU":
            mufu[ins.opcode] += weights[ins.addr]
    threads = 32 * num_warps
    return dict(
        sass_instructions=len(instrs),
        warp_instructions_per_program=warp_instr,
        thread_instructions_per_program=warp_instr * threads,
        loads_per_program={k: v * threads for k, v in loads.items()},
        stores_per_program={k: v * threads for k, v in stores.items()},
        load_bytes_per_program=sum(v * threads * _mem_width(k) / 8 for k, v in loads.items()),
        store_bytes_per_program=sum(v * threads * _mem_width(k) / 8 for k, v in stores.items()),
        mufu_per_program={k: v * threads for k, v in sorted(mufu.items())},
        source_loops=[dict(depth=s.depth, constant=s.const, trips=s.trips) for s in src],
        # bytes: the loop's code from its first instruction to its closing branch (inner loops included)
        loops=[dict(start=hex(lp.start), end=hex(lp.end), depth=lp.depth, trips=lp.trips,
                    instructions=sum(1 for i in main if lp.start <= i.addr <= lp.end),
                    bytes=lp.end - lp.start + SASS_INSTR_BYTES) for lp in loops],
        if_regions=[dict(start=hex(a), end=hex(b), fraction=f) for (a, b), f in zip(regions, ifs)],
        loops_matched=declared_ok and mapped_ok,
        notes=notes,
    )


# ---------------------------------------------------------------------------------------- the report


def minimal_bytes(op: str, direction: str, nx: int, ny: int, e: int, am: int = 1) -> int:
    """bench/README.md's minimal-bytes model; am: argmax element size."""
    pool = (nx * e + ny * e + ny * am, ny * e + ny * am + nx * e)
    return {
        "relu_lrn": (2 * nx * e, 3 * nx * e),
        "max_pool2d": pool,
        "relu_max_pool2d": pool,
        "relu_lrn_max_pool2d": (nx * e + ny * e + ny * am, 2 * nx * e + ny * e + ny * am),
        "dropout": (2 * nx * e, 2 * nx * e),
        "relu_dropout": (2 * nx * e, 3 * nx * e),
    }[op][direction == "bwd"]


def _argmax_size(launches) -> int:
    for launch in launches:
        for a in launch.args:
            if isinstance(a, torch.Tensor) and a.dtype in (torch.uint8, torch.int32) and a.dim() == 4:
                return a.element_size()
    return 1


def build_rows(ops, dtypes, layouts, processes=2, keep_text=False, log=print, verbose=False):
    """Capture every case, compile its launches for sm_90a, and return (rows, compiled results)."""
    cases, launches, skipped = [], [], []
    for op in ops:
        spec = OPS[op]
        if not op_available(op):
            skipped.append(f"{op}: kernels.{op} does not exist yet")
            continue
        for chw in spec.shapes:
            shape = (BATCH, *chw)
            for dtype in dtypes:
                for layout in (layouts if spec.rank == 4 else ["nchw"]):
                    if spec.rank != 4 and layout != "nchw":
                        continue
                    fwd, bwd, nx, ny = capture(spec.call, shape, DTYPES[dtype], layout)
                    for direction, ls in (("fwd", fwd), ("bwd", bwd)):
                        cases.append(dict(op=op, shape=list(shape), direction=direction, dtype=dtype,
                                          layout=layout, nx=nx, ny=ny, first=len(launches), count=len(ls),
                                          am=_argmax_size(fwd + bwd)))
                        launches.extend(ls)
    log(f"captured {len(launches)} launches in {len(cases)} cases; compiling for sm_90a ...")
    results = compile_all(launches, (90,), processes=processes, sass=True, keep_text=keep_text,
                          log=print if verbose else None)
    rows = []
    for c in cases:
        ks = [r[0] for r in results[c["first"]:c["first"] + c["count"]]]
        rows.append(_row(c, launches[c["first"]:c["first"] + c["count"]], ks))
    return rows, results, launches, skipped


def _row(c: dict, launches, ks: list[dict]) -> dict:
    e = DTYPES[c["dtype"]].itemsize
    nx, ny = c["nx"], c["ny"]
    mb = minimal_bytes(c["op"], c["direction"], nx, ny, e, c["am"])
    errors = [f"{k['name']}: {k.get('error') or 'no cubin'}" for k in ks if "error" in k or not k.get("sass")]
    row = dict(op=c["op"], shape=c["shape"], direction=c["direction"], dtype=c["dtype"], layout=c["layout"],
               kernels=[k["name"] for k in ks], minimal_bytes=mb, input_elements=nx, output_elements=ny)
    if errors or not ks:
        row.update(error="; ".join(errors) or "no launch recorded", target_ok=False, loops_matched=False)
        return row
    total = mufu_total = 0.0
    loads, stores = Counter(), Counter()
    lbytes = sbytes = 0.0
    notes = []
    details = []
    for launch, compiled in zip(launches, ks):
        k = {**compiled, **analyse_launch(launch, compiled)}
        programs = math.prod(launch.grid)
        per_sm, w = waves(programs, k["occupancy_warps"], k["num_warps"])
        k.update(programs=programs, programs_per_sm=per_sm, waves=round(w, 4) if per_sm else None)
        details.append({key: k[key] for key in _DETAILS})
        total += k["thread_instructions_per_program"] * programs
        mufu_total += sum(k["mufu_per_program"].values()) * programs
        for key, v in k["loads_per_program"].items():
            loads[key] += v * programs
        for key, v in k["stores_per_program"].items():
            stores[key] += v * programs
        lbytes += k["load_bytes_per_program"] * programs
        sbytes += k["store_bytes_per_program"] * programs
        notes += [f"{k['name']}: {n}" for n in k["notes"]]
    per_byte = total / mb
    mufu_equiv, bound = binding_limit(per_byte, mufu_total / mb)
    loop_bytes = max((lp["bytes"] for d in details for lp in d["loops"]), default=0)
    spill = max(k["spill_bytes"] for k in ks)
    target = TARGET_PER_BYTE[c["layout"]]
    row.update(
        instructions_per_byte=round(per_byte, 2),
        mufu_per_byte=round(mufu_total / mb, 3),
        mufu_issue_equivalent_per_byte=round(mufu_equiv, 2),
        binding_limit=bound,
        programs=[d["programs"] for d in details],
        programs_per_sm=[d["programs_per_sm"] for d in details],
        waves=[d["waves"] for d in details],
        largest_loop_bytes=loop_bytes,
        loop_over_icache_flag=loop_bytes > ICACHE_FLAG_BYTES,
        instructions_per_element=round(total / nx, 1),
        **({"instructions_per_output": round(total / ny, 1)} if OPS[c["op"]].pool and c["direction"] == "fwd"
           else {}),
        total_thread_instructions=int(round(total)),
        registers=max(k["registers"] for k in ks),
        spill_bytes=spill,
        occupancy_warps=min(k["occupancy_warps"] for k in ks),
        loads_per_element={key: round(v / nx, 4) for key, v in sorted(loads.items())},
        stores_per_element={key: round(v / nx, 4) for key, v in sorted(stores.items())},
        load_bytes_per_element=round(lbytes / nx, 3),
        store_bytes_per_element=round(sbytes / nx, 3),
        minimal_bytes_per_element=round(mb / nx, 3),
        loops_matched=all(d["loops_matched"] for d in details),
        target=target,
        target_ok=bool(per_byte <= target and spill == 0),
        note="; ".join(notes),
        kernel_details=details,
    )
    return row


_DETAILS = ("name", "function", "grid", "num_warps", "num_stages", "constexprs", "signature", "aligned",
            "trips", "registers", "spill_bytes", "stack", "local", "shared", "occupancy_warps",
            "programs", "programs_per_sm", "waves", "sass_instructions", "warp_instructions_per_program",
            "mufu_per_program", "source_loops", "loops", "if_fractions", "if_regions", "loops_matched",
            "notes")


def _fmt_mem(d: dict) -> str:
    short = lambda k: k.replace(".E", "").replace("LDG", "L").replace("STG", "S")
    return " ".join(f"{short(k)}:{v:.3g}" for k, v in d.items())


def table(rows) -> list[str]:
    head = ("| op | shape | dir | dtype | layout | kernels | instr/B | MUFU/B (x8) | bound | instr/elem | "
            "regs | spill | warps/SM | waves | loop KiB | loads/elem | stores/elem | loops | ok |")
    lines = [head, "|" + "---|" * 19]
    for r in rows:
        if "error" in r:
            shape = "x".join(map(str, r["shape"]))
            lines.append(f"| {r['op']} | {shape} | {r['direction']} | {r['dtype']} | "
                         f"{r['layout']} | {', '.join(r['kernels'])} | ERROR |" + " |" * 11 + " no |")
            continue
        per_el = f"{r['instructions_per_element']:.0f}"
        if "instructions_per_output" in r:
            per_el += f" ({r['instructions_per_output']:.0f}/out)"
        mufu = f"{r['mufu_per_byte']:.2f} ({r['mufu_issue_equivalent_per_byte']:.1f})"
        wv = ", ".join("none fit" if w is None else f"{w:.2f} ({n}/SM)"
                       for w, n in zip(r["waves"], r["programs_per_sm"]))
        loop_kb = ("-" if not r["largest_loop_bytes"] else f"{r['largest_loop_bytes'] / 1024:.1f}"
                   + ("*" if r["loop_over_icache_flag"] else ""))
        lines.append(
            f"| {r['op']} | {'x'.join(map(str, r['shape']))} | {r['direction']} | {r['dtype']} | "
            f"{r['layout']} | {', '.join(r['kernels'])} | {r['instructions_per_byte']:.1f} | {mufu} | "
            f"{r['binding_limit']} | {per_el} | {r['registers']} | "
            f"{r['spill_bytes']} | {r['occupancy_warps']} | {wv} | {loop_kb} | "
            f"{_fmt_mem(r['loads_per_element'])} | "
            f"{_fmt_mem(r['stores_per_element'])} | {'yes' if r['loops_matched'] else 'NO'} | "
            f"{'yes' if r['target_ok'] else 'no'} |")
    return lines


def _git_commit():
    try:
        from bench.common import git_commit
        return git_commit()
    except Exception:  # noqa: BLE001
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"), help="folder for the .json and .md")
    ap.add_argument("--ops", default=",".join(OPS), help="comma-separated ops")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--layouts", default="nchw,channels_last")
    ap.add_argument("--keep-sass", metavar="DIR", help="write each kernel's SASS and PTX there")
    ap.add_argument("--quiet", action="store_true", help="no table on stdout")
    ap.add_argument("--verbose", action="store_true", help="a line per compiled kernel, with its time")
    ap.add_argument("--check", action="store_true", help="exit 1 if an nchw row misses its target")
    ap.add_argument("--processes", type=int, default=2, help="compile processes (default 2)")
    ap.add_argument("--debug-spec", action="store_true",
                    help="print each distinct kernel's compiled signature and aligned arguments")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("sass_cost: TRITON_INTERPRET is set and Triton is already imported (the kernels would be "
              "interpreted): run in a process without it", file=sys.stderr)
        return 2
    ops = [o for o in args.ops.split(",") if o]
    bad = [o for o in ops if o not in OPS]
    dtypes = [d for d in args.dtypes.split(",") if d]
    layouts = [lay for lay in args.layouts.split(",") if lay]
    if bad or any(d not in DTYPES for d in dtypes) or any(lay not in LAYOUTS for lay in layouts):
        ap.error(f"unknown op / dtype / layout; ops: {', '.join(OPS)}; dtypes: {', '.join(DTYPES)}; "
                 f"layouts: {', '.join(LAYOUTS)}")
    log = (lambda *a, **k: None) if args.quiet else print
    t0 = time.perf_counter()
    rows, results, launches, skipped = build_rows(ops, dtypes, layouts, args.processes,
                                                  keep_text=bool(args.keep_sass), log=log,
                                                  verbose=args.verbose)
    elapsed = time.perf_counter() - t0
    for s in skipped:
        log(f"skipped {s}")
    if args.keep_sass:
        keep = Path(args.keep_sass)
        keep.mkdir(parents=True, exist_ok=True)
        seen = set()
        for (r,) in results:
            if "ptx" not in r or id(r) in seen:
                continue
            seen.add(id(r))
            tag = f"{r['name']}_{len(seen):03d}"
            (keep / f"{tag}.sass").write_text(r["sass"])
            (keep / f"{tag}.ptx").write_text(r["ptx"])
            (keep / f"{tag}.json").write_text(json.dumps(
                {k: v for k, v in r.items() if k not in ("sass", "ptx", "ttir")}, indent=1, default=str))
        log(f"SASS of {len(seen)} distinct kernels in {keep}")
    if args.debug_spec:
        seen = set()
        for (r,) in results:
            if id(r) in seen or "signature" not in r:
                continue
            seen.add(id(r))
            print(f"{r['name']} (first launch grid={r['grid']}) warps={r['num_warps']} "
                  f"stages={r['num_stages']} constexprs={r['constexprs']}\n  signature={r['signature']}\n"
                  f"  aligned={r['aligned']}")
    date = _dt.date.today().isoformat()
    meta = dict(triton=triton.__version__, torch=torch.__version__, python=sys.version.split()[0],
                git_commit=_git_commit(), date=date, target="sm_90a", batch=BATCH,
                lrn=LRN, pool=POOL, dropout_p=0.5, skipped=skipped,
                run_seconds=round(elapsed, 1),  # far less with Triton's cache warm
                distinct_kernels=len({id(r) for (r,) in results}),
                budget=BUDGET, targets_per_byte=TARGET_PER_BYTE,
                sm_count=SM_COUNT, issue_lanes_per_sm=ISSUE_LANES, mufu_lanes_per_sm=MUFU_LANES,
                sass_instruction_bytes=SASS_INSTR_BYTES, icache_flag_bytes=ICACHE_FLAG_BYTES,
                method=("static estimate from the SASS of each kernel compiled as the JIT would at "
                        "runtime (fake CUDA driver, sm_90a); loops weighted by their mean trip counts and "
                        "runtime ifs outside loops by the fraction of programs entering them, both computed "
                        "from each launch's arguments (TRIPS); every instruction of a loop body counted on "
                        "every trip, both sides of other forward branches counted, predicated-off "
                        "instructions counted; to be confirmed on a GPU with Nsight Compute (executed "
                        "instructions, DRAM bytes)"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"sass_cost_{triton.__version__}_{date}"
    Path(f"{stem}.json").write_text(json.dumps({"rows": rows, "meta": meta}, indent=1, default=str) + "\n")
    lines = table(rows)
    md = [f"# Static cost from SASS (sm_90a), triton {triton.__version__}, {date}", "",
          "A static estimate, read from the SASS each kernel compiles to for sm_90a (compiled as Triton's "
          "JIT would for these launches, without a GPU): dynamic thread-instructions from the SASS loops "
          "weighted by their trip counts, computed from each launch's arguments. A GPU run (Nsight "
          "Compute: executed instructions, DRAM bytes, duration) must confirm it. " + BUDGET, "",
          f"Batch {BATCH}; LRN {LRN}; pool {POOL}; dropout p=0.5. instr/B: thread-instructions per minimal "
          "byte (bench/README.md's model); instr/elem: per input element (pool forwards: also per output); "
          "loads/stores per input element by SASS opcode (L = LDG, S = STG; widths in bits, no suffix = 32); "
          "loops: SASS loops (and runtime ifs) matched the kernel's loops and ifs one-to-one. "
          f"MUFU/B: special-function thread-instructions per minimal byte, and in brackets their issue-slot "
          f"equivalent (x{ISSUE_LANES // MUFU_LANES}: {MUFU_LANES} MUFU lanes per clock per SM against "
          f"{ISSUE_LANES} issue lanes); bound: the larger of instr/B and that equivalent (issue or MUFU). "
          f"waves: programs / (programs resident per SM at the occupancy shown x {SM_COUNT} SMs, an H100 "
          f"SXM), per launch. loop KiB: the largest loop's code ({SASS_INSTR_BYTES} bytes an instruction; "
          f"- no loop), * over {ICACHE_FLAG_BYTES // 1024} KiB (a flag, not a measured instruction-cache "
          "size). "
          f"Commit {meta['git_commit']}, torch {torch.__version__}.", "", *lines, ""]
    if skipped:
        md += ["Skipped: " + "; ".join(skipped), ""]
    notes = [f"- {r['op']} {r['direction']} {r['dtype']} {r['layout']} {tuple(r['shape'])}: {r['note']}"
             for r in rows if r.get("note")]
    if notes:
        md += ["Notes:", "", *notes, ""]
    errs = [f"- {r['op']} {r['direction']} {r['dtype']} {r['layout']}: {r['error']}"
            for r in rows if "error" in r]
    if errs:
        md += ["Errors:", "", *errs, ""]
    Path(f"{stem}.md").write_text("\n".join(md))
    if not args.quiet:
        print("\n".join(lines))
        print(f"\n{len(rows)} rows in {elapsed:.1f} s; wrote {stem}.json and .md")
    if any("error" in r for r in rows):
        for e in errs:
            print(e, file=sys.stderr)
        return 2
    if args.check and any(r["layout"] == "nchw" and not r["target_ok"] for r in rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
