"""Helpers for the benchmarks: run metadata, saved-for-backward byte counting, timers, copy bandwidth.

Nothing here runs at import time beyond imports.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.multiprocessing.reductions import StorageWeakRef

REPO = Path(__file__).resolve().parents[1]
QUANTILES = [0.5, 0.2, 0.8]  # median, 20th and 80th percentile, as triton.testing.do_bench returns them


# ---------------------------------------------------------------- run metadata

def git_commit() -> str | None:
    """The checkout's commit ("+dirty" when tracked files differ), or None without git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


SOURCE_DIRS = ("kernels", "alexnet", "train", "bench", "tests")
PREPARED = REPO / ".gpu_prepared.json"  # written here by `bash bench/tools/gpu_check.sh --prepare`; travels


def source_fingerprint(dirs=SOURCE_DIRS, root: Path = REPO) -> str:
    """sha256 over the .py files under ``dirs`` (relative paths and contents): equal fingerprints mean the
    same code, with or without git (a GPU machine gets the working tree but no .git)."""
    import hashlib
    h = hashlib.sha256()
    for d in dirs:
        for path in sorted((root / d).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def commit_info() -> dict:
    """Which code ran. The record ``--prepare`` wrote just before the tree was sent wins when the sources
    are still those it fingerprinted (a GPU machine may hold a stale .git: one reported a commit hours
    old); else git's answer, marked unverified when a prepared record disagrees; else .git/HEAD read
    directly. ``git_commit_by_git`` keeps what git itself said."""
    import json
    info: dict = {"git_commit": None, "git_commit_by_git": git_commit(),
                  "kernels_sha256": source_fingerprint(("kernels",)), "sources_sha256": source_fingerprint()}
    if PREPARED.exists():
        try:
            prep = json.loads(PREPARED.read_text())
            info["prepared"] = prep
            info["sources_match_prepared"] = prep.get("sources_sha256") == info["sources_sha256"]
            if info["sources_match_prepared"]:
                info["git_commit"] = prep.get("git_commit")
                info["commit_source"] = "prepared (sources match)"
        except (OSError, ValueError) as exc:
            info["prepared_error"] = repr(exc)
    if info["git_commit"] is None and info["git_commit_by_git"]:
        info["git_commit"] = info["git_commit_by_git"]
        info["commit_source"] = "git" + (" (unverified: the prepared record's sources differ)"
                                         if "prepared" in info else "")
    if info["git_commit"] is None:
        head = REPO / ".git" / "HEAD"
        try:
            ref = head.read_text().strip()
            if ref.startswith("ref: "):
                name = ref[5:]
                path = REPO / ".git" / name
                if path.exists():
                    ref = path.read_text().strip()
                else:
                    packed = (REPO / ".git" / "packed-refs").read_text().splitlines()
                    ref = next(line.split()[0] for line in packed if line.endswith(" " + name))
            info["git_commit"] = ref
            info["commit_source"] = ".git/HEAD read directly (dirty state unknown)"
        except (OSError, StopIteration):
            info["commit_source"] = "unknown"
    return info


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def device_slug(device: torch.device) -> str:
    """File-name-safe device name: "nvidia-h100-80gb-hbm3", or "cpu" for the CPU path."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")


def env_info(device: torch.device) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    now = _dt.datetime.now(_dt.UTC)
    info = {
        "date": now.strftime("%Y-%m-%d"),
        "datetime_utc": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "git_commit": commit_info().get("git_commit"),
        "cpu_threads": torch.get_num_threads(),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["sm_count"] = props.multi_processor_count
        info["capability"] = f"{props.major}.{props.minor}"
    else:
        try:
            info["load_average"] = os.getloadavg()
        except OSError:
            pass
    return info


# ---------------------------------------------------------------- saved-for-backward bytes

def fake_mode():
    """A FakeTensorMode: tensors with shapes, dtypes and devices but no memory, so a batch-128 forward
    can be counted on a machine without a GPU. Custom ops run their registered fake implementation,
    which allocates what the real one does; autograd saves what it would save for real."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    return FakeTensorMode()


def count_saved(fn: Callable[[], object], exclude: tuple[torch.Tensor, ...] = (),
                details: list | None = None) -> tuple[int, int, object]:
    """Run ``fn`` and count the tensors autograd saves for backward, each storage once (a tensor saved
    by two nodes, or a view of a saved tensor, is one storage). Storages of ``exclude`` (parameters)
    are left out. Returns (bytes, number of storages, fn's result); with a ``details`` list, appends
    (shape, dtype, storage bytes) of each storage's first saved tensor to it.

    Only what goes through ``ctx.save_for_backward`` / autograd's saved variables is seen; tensors
    stashed as plain ``ctx`` attributes are not (the GPU run's retained-memory column catches those)."""
    skip = {StorageWeakRef(t.untyped_storage()).cdata for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        key = StorageWeakRef(s).cdata
        if key not in skip and key not in seen:
            seen[key] = s.nbytes()
            if details is not None:
                details.append((list(t.shape), str(t.dtype).split(".")[-1], s.nbytes()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), len(seen), out


# ---------------------------------------------------------------- timers

def time_gpu(fn: Callable[[], object], warmup_ms: int = 25, rep_ms: int = 100) -> list[float]:
    """[median, p20, p80] in ms from triton.testing.do_bench (L2 flushed between calls)."""
    import triton.testing
    return [float(v) for v in triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=QUANTILES)]


def time_gpu_graph(fn: Callable[[], object], rep_ms: int = 20) -> list[float]:
    """[median, p20, p80] in ms per call from triton.testing.do_bench_cudagraph: many calls replayed
    as one CUDA graph, so no launch or Python overhead, but also no L2 flush (small inputs stay hot)."""
    import triton.testing
    return [float(v) for v in triton.testing.do_bench_cudagraph(fn, rep=rep_ms, quantiles=QUANTILES)]


def time_cpu(fn: Callable[[], object], reps: int = 5, warmup: int = 1, budget_s: float = 1.5) -> list[float]:
    """[median, p20, p80] in ms from time.perf_counter around single calls: ``reps`` calls, or at least 3
    once ``budget_s`` seconds are spent (slow CPU-path calls on a shared 2-core machine)."""
    for _ in range(warmup):
        fn()
    ts: list[float] = []
    start = time.perf_counter()
    while len(ts) < reps and (len(ts) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return quantiles(ts)


def quantiles(ts: list[float]) -> list[float]:
    ts = sorted(ts)
    pick = lambda q: ts[min(len(ts) - 1, max(0, round(q * (len(ts) - 1))))]
    return [statistics.median(ts), pick(0.2), pick(0.8)]


def copy_bandwidth_gbs(device: torch.device, gib: float = 1.0) -> dict:
    """Device copy bandwidth: time dst.copy_(src) on a ``gib`` GiB float32 buffer; bytes moved count
    the read and the write (2 x size). The roofline every op's effective bandwidth is compared with."""
    n = int(gib * 2**30) // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    copy = lambda: dst.copy_(src)
    ms = time_gpu(copy) if device.type == "cuda" else time_cpu(copy)
    return {"buffer_gib": gib, "ms": ms, "gbs": 2 * n * 4 / (ms[0] * 1e-3) / 1e9}


def autocast_or_null(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)
