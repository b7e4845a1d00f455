"""Fused Triton ops against eager PyTorch and torch.compile, at AlexNet's shapes: time, bandwidth, memory.

    python bench/fused_vs_eager.py            # everything (a GPU run takes a few minutes)
    python bench/fused_vs_eager.py --quick    # one shape per op, float32, fewer repetitions

Providers: "eager" = kernels.reference (PyTorch's own ops), "compile" = torch.compile of the same reference
functions (Inductor's generated Triton kernels), "fused" = the project's ops in kernels.

Directions: "fwd" is a training forward (input requires grad, so the graph and saved tensors are built);
"bwd" is the backward alone: autograd.grad through a retained graph with a fixed random grad_output;
"fwd+bwd" is both. Inputs are fresh randn tensors (never zeros); the same input goes to every provider.

Minimal-bytes model (effective bandwidth = these bytes / median time; e = element size, X = input
elements, Y = output elements; the same model for every provider, so a provider that moves more bytes
than needed shows as a lower percentage of the device's copy bandwidth, measured in the same run):
    relu_lrn             fwd: read x, write y                     2Xe
                         bwd: read x, read dy, write dx           3Xe   (s and y recomputed from x)
    max_pool2d           fwd: read x, write y, write argmax       Xe + Ye + Y   (1-byte window index)
                         bwd: read dy, read argmax, write dx      Ye + Y + Xe
    relu_max_pool2d      as max_pool2d (the ReLU is folded into the window's maximum)
    relu_lrn_max_pool2d  fwd: read x, write y, write argmax       Xe + Ye + Y
                         bwd: read x, dy, argmax, write dx        2Xe + Ye + Y
    dropout              fwd: read x, write y                     2Xe   (mask regenerated from a seed)
                         bwd: read dy, write dx                   2Xe
    relu_dropout         fwd: read x, write y                     2Xe
                         bwd: read dy, read y (or x), write dx    3Xe
    fwd+bwd = fwd + bwd.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

INTERPRET = os.environ.get("TRITON_INTERPRET", "") not in ("", "0")  # read before triton is imported

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import kernels  # noqa: E402
from bench.common import (  # noqa: E402
    autocast_or_null,
    copy_bandwidth_gbs,
    count_saved,
    device_slug,
    env_info,
    fake_mode,
    quantiles,
    time_cpu,
    time_gpu,
    time_gpu_graph,
)
from kernels import reference  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SHORT = {"float32": "fp32", "bfloat16": "bf16"}
DIRECTIONS = ("fwd", "bwd", "fwd+bwd")
P_DROP = 0.5


@dataclass(frozen=True)
class Case:
    op: str
    shape: tuple[int, ...]  # one sample's shape; the batch is prepended
    where: str  # the layer in AlexNet whose output it is

    @property
    def name(self) -> str:
        return f"{self.op} {'x'.join(map(str, self.shape))}"


CASES = [
    Case("relu_lrn", (96, 55, 55), "conv1"),
    Case("relu_lrn", (256, 27, 27), "conv2"),
    Case("max_pool2d", (96, 55, 55), "conv1"),
    Case("max_pool2d", (256, 27, 27), "conv2"),
    Case("max_pool2d", (256, 13, 13), "conv5"),
    Case("relu_max_pool2d", (256, 13, 13), "conv5"),
    Case("relu_lrn_max_pool2d", (96, 55, 55), "conv1"),
    Case("relu_lrn_max_pool2d", (256, 27, 27), "conv2"),
    Case("dropout", (4096,), "fc6/fc7"),
    Case("relu_dropout", (4096,), "fc6/fc7"),
]
OPS = sorted({c.op for c in CASES})

# Each provider called with the input only: every op runs at its AlexNet defaults (n=5, alpha=1e-4,
# beta=0.75, k=2; 3x3 windows, stride 2; p=0.5, training).
EAGER = {op: getattr(reference, op) for op in OPS}
FUSED = {op: (lambda name: lambda x: getattr(kernels, name)(x))(op) for op in OPS}
_COMPILED: dict[str, object] = {}


def compiled(op: str):
    """torch.compile of the reference function, one compiled callable per op (cached)."""
    if op not in _COMPILED:
        _COMPILED[op] = torch.compile(EAGER[op], dynamic=False)  # specialised to each shape, as is fair
    return _COMPILED[op]


def compiled_retainable(op: str):
    """For timing the backward alone through a retained graph: AOTAutograd's donated buffers (on by
    default) forbid retain_graph=True, so this second compiled callable (a separate wrapper, so a
    separate dynamo cache) is built with donation off. Call it inside ``no_donation()``; fwd and
    fwd+bwd timings and memory use the default ``compiled``."""
    key = op + "/retainable"
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile((lambda f: lambda x: f(x))(EAGER[op]), dynamic=False)
    return _COMPILED[key]


def no_donation():
    try:
        from torch._functorch import config as functorch_config
    except ImportError:
        return contextlib.nullcontext()
    if not hasattr(functorch_config, "donated_buffer"):
        return contextlib.nullcontext()
    return functorch_config.patch(donated_buffer=False)


def bytes_model(op: str, nx: int, ny: int, e: int) -> dict[str, int]:
    """The minimal bytes of the module docstring, per direction."""
    fwd, bwd = {
        "relu_lrn": (2 * nx * e, 3 * nx * e),
        "max_pool2d": (nx * e + ny * e + ny, ny * e + ny + nx * e),
        "relu_max_pool2d": (nx * e + ny * e + ny, ny * e + ny + nx * e),
        "relu_lrn_max_pool2d": (nx * e + ny * e + ny, 2 * nx * e + ny * e + ny),
        "dropout": (2 * nx * e, 2 * nx * e),
        "relu_dropout": (2 * nx * e, 3 * nx * e),
    }[op]
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- correctness guard

def check(op: str, fn, x: torch.Tensor, dy: torch.Tensor) -> dict:
    """A fast kernel that is wrong is no result. Dropout ops: kept values equal x/(1-p) (ReLU first for
    relu_dropout), dropped ones 0, keep rate near 1-p, gradient through the same mask. Others: max abs
    error of output and input gradient against a float64 reference, next to eager's own error; passes
    when within max(4 x eager's error, tol x max|ref|)."""
    xr = x.detach().requires_grad_()
    y = fn(xr)
    (dx,) = torch.autograd.grad(y, xr, dy)
    if op in ("dropout", "relu_dropout"):
        base = (x if op == "dropout" else x.clamp_min(0)).float()
        kept = (y != 0) & (base != 0)
        y_err = (y.float() - torch.where(kept, base / (1 - P_DROP), 0.0)).abs().max().item()
        g_err = (dx.float() - torch.where(kept, dy.float() / (1 - P_DROP), 0.0)).abs().max().item()
        keep = (kept.sum() / (base != 0).sum()).item()
        tol = 1e-5 if x.dtype == torch.float32 else 1e-2
        n = (base != 0).sum().item()
        ok = (y_err <= tol * 4 and g_err <= tol * 4  # keep rate within 5 binomial standard deviations
              and abs(keep - (1 - P_DROP)) <= 5 * (P_DROP * (1 - P_DROP) / max(n, 1)) ** 0.5)
        return {"ok": ok, "out_err": y_err, "grad_err": g_err, "keep_rate": keep}
    x64 = x.detach().double().requires_grad_()
    y64 = EAGER[op](x64)
    (dx64,) = torch.autograd.grad(y64, x64, dy.double())
    err = lambda a, b: (a.double() - b).abs().max().item()
    tol = 1e-5 if x.dtype == torch.float32 else 1e-2
    res = {"out_err": err(y, y64), "grad_err": err(dx, dx64), "eager_out_err": 0.0, "eager_grad_err": 0.0}
    try:  # eager may not support the dtype on this device (bfloat16 LRN on CPU): then tol alone
        xe = x.detach().requires_grad_()
        ye = EAGER[op](xe)
        (dxe,) = torch.autograd.grad(ye, xe, dy)
        res.update(eager_out_err=err(ye, y64), eager_grad_err=err(dxe, dx64))
    except (RuntimeError, NotImplementedError) as exc:
        res["eager_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    out_ok = res["out_err"] <= max(4 * res["eager_out_err"], tol * y64.abs().max().item())
    res["ok"] = out_ok and res["grad_err"] <= max(4 * res["eager_grad_err"], tol * dx64.abs().max().item())
    if op == "relu_lrn_max_pool2d" and out_ok and not res["ok"] and fn is FUSED[op]:
        # The block's contract is max_pool2d of its own relu_lrn values, argmax included: where two of
        # PyTorch's LRN values tie exactly and the kernel's (fast 1/sqrt) differ by an ulp, the gradient
        # rightly goes elsewhere than PyTorch's. With the output right, judge the gradient against the
        # composition of the project's own ops.
        xc = x.detach().requires_grad_()
        yc = kernels.max_pool2d(kernels.relu_lrn(xc))
        (dxc,) = torch.autograd.grad(yc, xc, dy)
        res["composition_out_equal"] = bool(torch.equal(y, yc))
        res["composition_grad_err"] = err(dx, dxc.double())
        res["ok"] = (res["composition_out_equal"]
                     and res["composition_grad_err"] <= tol * dx64.abs().max().item())
        res["note"] = "checked against kernels.max_pool2d(kernels.relu_lrn(x)) (ties split by rounding)"
    return res


# ---------------------------------------------------------------- per-op timing and memory

def op_timings(case: Case, dtype, batch, providers, device, quick, graph=False,
               bwd_variants=None) -> tuple[list[dict], dict]:
    """Time every provider in every direction. ``bwd_variants[prov]``: (callable, context) that builds
    the retained graph of the bwd-only timing instead of the provider itself (the compile provider)."""
    bwd_variants = bwd_variants or {}
    torch.manual_seed(0)
    x = torch.randn(batch, *case.shape, device=device, dtype=dtype).requires_grad_()
    with fake_mode():  # the output's shape, without running any provider
        y_shape = EAGER[case.op](torch.empty(x.shape, dtype=dtype, device=device)).shape
    dy = torch.randn(y_shape, device=device, dtype=dtype)
    nx, ny, e = x.numel(), dy.numel(), x.element_size()
    model = bytes_model(case.op, nx, ny, e)
    rows, checks = [], {}
    for prov, fn in providers.items():
        try:
            if prov != "eager":
                checks[prov] = check(case.op, fn, x, dy)  # also compiles / warms up
            fb, ctx = bwd_variants.get(prov, (fn, contextlib.nullcontext()))
            with ctx:
                y = fb(x)
            calls = {"fwd": lambda fn=fn: fn(x),
                     "bwd": lambda y=y: torch.autograd.grad(y, x, dy, retain_graph=True),
                     "fwd+bwd": lambda fn=fn: torch.autograd.grad(fn(x), x, dy)}
            for d, call in calls.items():
                if device.type == "cuda":
                    ms = time_gpu(call, warmup_ms=10 if quick else 25, rep_ms=40 if quick else 100)
                else:
                    ms = time_cpu(call, reps=3 if quick else 5)
                rows.append({"case": case.name, "op": case.op, "shape": [batch, *case.shape],
                             "dtype": str(dtype).split(".")[-1], "direction": d, "provider": prov,
                             "ms": ms, "bytes": model[d], "gbs": model[d] / (ms[0] * 1e-3) / 1e9})
                if graph:  # opt-in: a failed capture could disturb the rest of the run
                    try:
                        rows[-1]["ms_graph"] = time_gpu_graph(call)
                    except Exception as exc:
                        rows[-1]["graph_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            del y, calls
        except Exception as exc:  # an unsupported provider is recorded, never hidden
            checks.setdefault(prov, {})["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return rows, checks


def op_memory(case: Case, dtype, batch, providers, device) -> list[dict]:
    """Saved-for-backward bytes (each storage once). On a GPU: real tensors, plus the memory still
    allocated after the forward (output + saved) and the peak during forward+backward, both over the
    input and grad_output. Without a GPU: counted under a FakeTensorMode on "cuda" tensors at the same
    batch (no memory is touched; custom ops run their registered fake implementations)."""
    rows = []
    dname = str(dtype).split(".")[-1]
    for prov, fn in providers.items():
        row = {"case": case.name, "op": case.op, "shape": [batch, *case.shape], "dtype": dname,
               "provider": prov}
        try:
            if device.type == "cuda":
                torch.manual_seed(0)
                x = torch.randn(batch, *case.shape, device=device, dtype=dtype).requires_grad_()
                dy = torch.randn_like(fn(x))
                sync(device)
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
                saved, n, y = count_saved(lambda fn=fn, x=x: fn(x))
                sync(device)
                row["retained_after_fwd"] = torch.cuda.memory_allocated(device) - base
                torch.autograd.grad(y, x, dy)
                sync(device)
                row["peak_fwd_bwd"] = torch.cuda.max_memory_allocated(device) - base
                row["method"] = "real"
                del dy, y
            else:
                with fake_mode():
                    x = torch.randn(batch, *case.shape, device="cuda", dtype=dtype).requires_grad_()
                    saved, n, _ = count_saved(lambda fn=fn, x=x: fn(x))
                row["method"] = "fake (FakeTensorMode, cuda tensors)"
            row.update(saved_bytes=saved, saved_storages=n, input_bytes=x.numel() * x.element_size())
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        rows.append(row)
    return rows


# ---------------------------------------------------------------- the whole model

def model_memory(args, device, cfg=None) -> dict:
    """Saved activation bytes per image of one AlexNet training forward, fused and eager (``cfg``: the
    network, AlexNetConfig() by default)."""
    try:
        from alexnet.model import AlexNet, AlexNetConfig
    except Exception as exc:
        return {"error": f"alexnet.model unavailable: {type(exc).__name__}: {exc}"}
    cfg = cfg or AlexNetConfig()
    hw, classes = cfg.image_size, cfg.num_classes  # 227 and 1000 at the defaults
    out: dict = {"input": [3, hw, hw], "classes": classes, "saved_per_image": {}, "train_step": []}

    # Saved activation bytes per image (parameters and buffers left out; the input image counts): real
    # tensors on a GPU, fake "cuda" tensors at the same batch without one (plus a real CPU cross-check).
    def per_image(m, x, fake):
        """(bytes per image, method, the saved storages largest first as (shape, dtype, bytes))."""
        details: list = []
        saved, _, _ = count_saved(lambda: m(x), exclude=(*m.parameters(), *m.buffers()), details=details)
        details.sort(key=lambda d: -d[2])
        if shared_counter is not None and not fake:
            return shared_counter(m, x), "alexnet.model.saved_activation_bytes", details
        return saved / x.shape[0], "bench.common.count_saved", details

    try:
        from alexnet.model import saved_activation_bytes as shared_counter
    except ImportError:
        shared_counter = None
    runs = [(ops, args.batch, device.type != "cuda") for ops in ("eager", "fused")]
    if device.type != "cuda" and not args.quick:  # a real count beside the fake one
        runs += [(ops, 2, False) for ops in ("eager", "fused")]
    for ops, b, fake in runs:
        key = ops if b == args.batch else f"{ops} (real CPU, batch {b})"
        try:
            if fake:
                with fake_mode(), torch.device("cuda"):
                    m = AlexNet(cfg, ops=ops).train()
                    v, how, details = per_image(m, torch.randn(b, 3, hw, hw), fake)
                how += " on fake cuda tensors (FakeTensorMode)"
            else:
                m = AlexNet(cfg, ops=ops).to(device).train()
                v, how, details = per_image(m, torch.randn(b, 3, hw, hw, device=device), fake)
            out["saved_per_image"][key] = {"bytes_per_image": v, "batch": b, "method": how,
                                           "storages": details}
            del m
        except Exception as exc:
            out["saved_per_image"][key] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}

    return out


#: Training-step providers: (AlexNet's ops, compiled with torch.compile).
MODEL_PROVIDERS = {"eager": ("eager", False), "fused": ("fused", False), "compile": ("eager", True),
                   "compile_fused": ("fused", True)}


def model_steps(args, device, dtype, deadline, skipped, providers=None, cfg=None) -> list[dict]:
    """Training step throughput: forward, cross-entropy, backward, SGD (momentum 0.9, weight decay 5e-4);
    float32, or autocast to ``dtype``. Providers past ``deadline`` are skipped (listed in ``skipped``).
    ``providers``: names from MODEL_PROVIDERS (default: eager, fused, and compile on a GPU unless
    --no-compile / --quick); "compile_fused" is torch.compile of the fused model."""
    from alexnet.model import AlexNet, AlexNetConfig
    cfg = cfg or AlexNetConfig()
    hw, classes = cfg.image_size, cfg.num_classes
    rows: list[dict] = []
    gpu = device.type == "cuda"
    batch = args.batch if gpu else args.cpu_model_batch
    steps = (5 if args.quick else 20) if gpu else 3
    if providers is None:
        providers = ["eager", "fused"]
        if gpu and not args.no_compile and not args.quick:
            providers.append("compile")
    if not (gpu or dtype == torch.float32):
        return []  # the CPU path steps in float32 only
    for prov in providers:
        if time.perf_counter() > deadline:
            skipped.append(f"training step {prov} {str(dtype).split('.')[-1]}")
            continue
        row = {"provider": prov, "dtype": str(dtype).split(".")[-1], "batch": batch,
               "precision": "float32" if dtype == torch.float32 else f"autocast {dtype}"}
        base = torch.cuda.memory_allocated(device) if gpu else 0
        try:
            torch.manual_seed(0)
            ops, compile_it = MODEL_PROVIDERS[prov]
            m = AlexNet(cfg, ops=ops).to(device).train()
            net = torch.compile(m, dynamic=False) if compile_it else m
            opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
            x = torch.randn(batch, 3, hw, hw, device=device)
            t = torch.randint(0, classes, (batch,), device=device)

            def step(net=net, opt=opt, x=x, t=t, dtype=dtype):
                opt.zero_grad(set_to_none=True)
                with autocast_or_null(device, dtype):
                    loss = F.cross_entropy(net(x), t)
                loss.backward()
                opt.step()

            t0 = time.perf_counter()
            for _ in range(3 if gpu else 1):  # warm-up (compiles the compile provider)
                step()
            sync(device)
            row["warmup_s"] = time.perf_counter() - t0
            if gpu:
                torch.cuda.reset_peak_memory_stats(device)
            ts = []
            for _ in range(steps):
                t0 = time.perf_counter()
                step()
                sync(device)
                ts.append((time.perf_counter() - t0) * 1e3)
            row["ms"] = quantiles(ts)
            row["images_per_s"] = batch / (row["ms"][0] * 1e-3)
            if gpu:  # parameters, gradients, momentum, activations, workspaces of one step
                row["peak_allocated"] = torch.cuda.max_memory_allocated(device) - base
            del m, net, opt, x, t, step
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        rows.append(row)
        if MODEL_PROVIDERS[prov][1]:
            torch._dynamo.reset()  # its guards hold the compiled model alive
        if gpu:
            torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------- targets

def evaluate_targets(times, model, gpu) -> list[dict]:
    """The issue's targets, each PASS, MISS or N/A with the measured value: misses are recorded."""
    res = []
    add = lambda target, item, value, ok: res.append(
        {"target": target, "item": item, "value": value,
         "status": "N/A" if ok is None else ("PASS" if ok else "MISS")})
    fused = [r for r in times if r["provider"] == "fused"]
    t1 = "fused fwd and bwd >= 80% of copy bandwidth"
    t2 = "ReLU+LRN fwd+bwd >= 4x eager and >= 1.5x compile"
    t3 = "ReLU+LRN+max-pool block fwd+bwd >= 1.5x compile"
    if not gpu:
        for t in (t1, t2, t3):
            add(t, "all", "kernel timings need a CUDA GPU", None)
    for r in fused if gpu else []:
        item = f"{r['case']} {r['dtype']} {r['direction']}"
        if r["direction"] in ("fwd", "bwd"):
            add(t1, item, f"{r['pct_copy']:.0f}%", r["pct_copy"] >= 80)
        if r["direction"] == "fwd+bwd" and r["op"] == "relu_lrn":
            se, sc = r.get("x_eager"), r.get("x_compile")
            add(t2, item, f"{se:.2f}x eager, " + (f"{sc:.2f}x compile" if sc else "compile n/a"),
                se >= 4 and (sc is not None and sc >= 1.5) if se else None)
        if r["direction"] == "fwd+bwd" and r["op"] == "relu_lrn_max_pool2d":
            sc = r.get("x_compile")
            add(t3, item, f"{sc:.2f}x compile" if sc else "compile n/a", sc >= 1.5 if sc else None)
    t4 = "training step >= 1.25x eager images/s and >= compiled eager"
    steps = {(r["dtype"], r["provider"]): r.get("images_per_s") for r in (model or {}).get("train_step", [])}
    batch = next((r["batch"] for r in (model or {}).get("train_step", [])), None)
    dts = sorted({d for d, _ in steps})
    if not gpu or not dts:
        add(t4, "all", "needs a CUDA GPU and alexnet.model", None)
    for d in dts if gpu else []:
        f, e, c = steps.get((d, "fused")), steps.get((d, "eager")), steps.get((d, "compile"))
        if f and e:
            val = f"{f / e:.2f}x eager" + (f", {f / c:.2f}x compile" if c else ", compile n/a")
            add(t4, f"batch {batch} {d}", val, f / e >= 1.25 and (c is not None and f >= c))
        else:
            add(t4, f"batch {batch} {d}", "fused or eager step failed", None)
    t5 = "activation memory per image <= 1/8 of eager"
    sp = (model or {}).get("saved_per_image", {})
    fb, eb = sp.get("fused", {}).get("bytes_per_image"), sp.get("eager", {}).get("bytes_per_image")
    if fb and eb:
        add(t5, "AlexNet forward", f"{fb / 1e6:.2f} MB vs {eb / 1e6:.2f} MB = 1/{eb / fb:.2f}", fb * 8 <= eb)
    else:
        add(t5, "AlexNet forward", "model memory not measured", None)
    order = [t1, t2, t3, t4, t5]
    return sorted(res, key=lambda r: order.index(r["target"]))  # stable: grouped by target


# ---------------------------------------------------------------- reporting

def annotate(times, copy_gbs) -> None:
    """Add % of copy bandwidth, and to fused rows the speedups vs eager and vs compile."""
    by = {(r["case"], r["dtype"], r["direction"], r["provider"]): r for r in times}
    for r in times:
        r["pct_copy"] = 100 * r["gbs"] / copy_gbs if copy_gbs else None
        if r["provider"] == "fused":
            for other in ("eager", "compile"):
                o = by.get((r["case"], r["dtype"], r["direction"], other))
                r[f"x_{other}"] = o["ms"][0] / r["ms"][0] if o else None


def fmt_load(load) -> str:
    return "/".join(f"{v:.1f}" for v in load) if load else "n/a"


def fmt(v, spec=".3f", none="-"):
    return none if v is None else format(v, spec)


def tables(res) -> dict[str, list[list[str]]]:
    gpu = res["meta"]["device_type"] == "cuda"
    by = {(r["case"], r["dtype"], r["direction"], r["provider"]): r for r in res["times"]}
    t = [["op", "shape", "dtype", "dir", "eager ms", "compile ms", "fused ms [p20-p80]", "fused GB/s",
          "% copy BW", "x eager", "x compile", "check"]]
    graph = any("ms_graph" in r for r in res["times"])
    if graph:
        t[0].append("fused ms in CUDA graph")
    keys = sorted({(r["case"], r["dtype"], r["direction"]) for r in res["times"]},
                  key=lambda k: ([c.name for c in CASES].index(k[0]), k[1], DIRECTIONS.index(k[2])))
    for case, dt, d in keys:
        e, c, f = (by.get((case, dt, d, p)) for p in ("eager", "compile", "fused"))
        chk = res["checks"].get(f"{case} {dt}", {}).get("fused", {})
        t.append([case.split()[0], "x".join(map(str, (e or f)["shape"])), dt, d,
                  fmt(e and e["ms"][0]), fmt(c and c["ms"][0]),
                  f"{f['ms'][0]:.3f} [{f['ms'][1]:.3f}-{f['ms'][2]:.3f}]" if f else "-",
                  fmt(f and f["gbs"], ".0f" if gpu else ".2f"),
                  fmt(f and f["pct_copy"], ".0f" if gpu else ".1f"),
                  fmt(f and f["x_eager"], ".2f"), fmt(f and f["x_compile"], ".2f"),
                  "error" if "error" in chk else ("ok" if chk.get("ok") else ("MISMATCH" if chk else "-"))]
                 + ([fmt(f and f.get("ms_graph") and f["ms_graph"][0])] if graph else []))
    m = [["op", "shape", "dtype", "eager saved MB (x in)", "compile saved MB (x in)", "fused saved MB (x in)"]
         + (["eager / compile / fused peak MB"] if gpu else [])]
    mb = {(r["case"], r["dtype"], r["provider"]): r for r in res["memory"]}
    for case, dt in sorted({(r["case"], r["dtype"]) for r in res["memory"]},
                           key=lambda k: ([c.name for c in CASES].index(k[0]), k[1])):
        cells, peaks = [], []
        for p in ("eager", "compile", "fused"):
            r = mb.get((case, dt, p))
            cells.append("-" if not r else ("error" if "error" in r else
                         f"{r['saved_bytes'] / 1e6:.1f} ({r['saved_bytes'] / r['input_bytes']:.2f})"))
            peaks.append(fmt(r and r.get("peak_fwd_bwd") and r["peak_fwd_bwd"] / 1e6, ".0f"))
        shape = next(r["shape"] for r in res["memory"] if r["case"] == case)
        m.append([case.split()[0], "x".join(map(str, shape)), dt, *cells]
                 + ([" / ".join(peaks)] if gpu else []))
    s = [["model", "dtype", "batch", "images/s", "ms/step [p20-p80]", "step peak MB", "note"]]
    for r in res.get("model", {}).get("train_step", []):
        s.append([r["provider"], r["precision"], str(r["batch"]), fmt(r.get("images_per_s"), ".1f"),
                  f"{r['ms'][0]:.1f} [{r['ms'][1]:.1f}-{r['ms'][2]:.1f}]" if "ms" in r else "-",
                  fmt(r.get("peak_allocated") and r["peak_allocated"] / 1e6, ".0f"), r.get("error", "")])
    for k, v in res.get("model", {}).get("saved_per_image", {}).items():
        s.append([f"saved/image {k}", "float32", str(v.get("batch", "-")), "-", "-", "-",
                  f"{v['bytes_per_image'] / 1e6:.3f} MB per image ({v['method']})" if "bytes_per_image" in v
                  else v.get("error", "")])
    st = [["model", "saved tensor shape", "dtype", "MB per image"]]
    for k in ("fused", "eager"):
        v = res.get("model", {}).get("saved_per_image", {}).get(k, {})
        for shape, dt, nbytes in v.get("storages", [])[:12]:
            st.append([k, "x".join(map(str, shape)), dt, f"{nbytes / v['batch'] / 1e6:.3f}"])
    g = [["target", "item", "value", "status"]] + [[x["target"], x["item"], x["value"], x["status"]]
                                                   for x in res["targets"]]
    out = {"Op timings": t, "Saved for backward": m, "AlexNet training step": s}
    if len(st) > 1:
        out["AlexNet forward: largest saved storages"] = st
    return {**out, "Targets": g}


def render_text(rows) -> str:
    w = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    line = lambda r: "  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)).rstrip()
    return "\n".join([line(rows[0]), "  ".join("-" * x for x in w)] + [line(r) for r in rows[1:]])


def render_md(rows) -> str:
    esc = lambda c: str(c).replace("|", "\\|")
    out = ["| " + " | ".join(map(esc, rows[0])) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(out + ["| " + " | ".join(map(esc, r)) + " |" for r in rows[1:]])


def plot(res, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fused = [r for r in res["times"] if r["provider"] == "fused" and r.get("x_eager")]
    mem = [r for r in res["memory"] if "saved_bytes" in r]
    fig, axes = plt.subplots(1, 2, figsize=(15, max(4, 0.28 * max(len(fused), len(mem) / 2, 8))))
    ax = axes[0]
    if fused:
        labels = [f"{r['case']} {SHORT[r['dtype']]} {r['direction']}" for r in fused]
        ys = range(len(fused))
        ax.barh([y - 0.2 for y in ys], [r["x_eager"] for r in fused], 0.4, label="vs eager")
        if any(r["x_compile"] for r in fused):
            ax.barh([y + 0.2 for y in ys], [r["x_compile"] or 0 for r in fused], 0.4, label="vs compile")
        ax.set_yticks(list(ys), labels, fontsize=7)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.invert_yaxis()
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no fused timings", ha="center")
    kind = "GPU" if res["meta"]["device_type"] == "cuda" else f"CPU path, batch {res['config']['cpu_batch']}"
    ax.set_title(f"fused speedup ({kind})")
    ax.set_xlabel("speedup (x)")
    ax = axes[1]
    keys = sorted({(r["case"], r["dtype"]) for r in mem},
                  key=lambda k: ([c.name for c in CASES].index(k[0]), k[1]))
    provs = [p for p in ("eager", "compile", "fused") if any(r["provider"] == p for r in mem)]
    mb = {(r["case"], r["dtype"], r["provider"]): r["saved_bytes"] / 1e6 for r in mem}
    for i, p in enumerate(provs):
        ax.barh([j + (i - (len(provs) - 1) / 2) * 0.8 / len(provs) for j in range(len(keys))],
                [mb.get((*k, p), 0) for k in keys], 0.8 / len(provs), label=p)
    ax.set_yticks(list(range(len(keys))), [f"{c} {SHORT[d]}" for c, d in keys], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlim(left=1e-3)  # a few bytes (a seed) would stretch the axis
    ax.invert_yaxis()
    ax.set_xlabel(f"saved for backward, MB, log scale (batch {res['config']['batch']})")
    ax.set_title("saved-for-backward bytes per op")
    if provs:
        ax.legend()
    fig.suptitle(f"{res['meta']['device']} | torch {res['meta']['torch']} | triton {res['meta']['triton']} "
                 f"| {res['meta']['date']} | {res['meta']['git_commit'] or 'no git'}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="one shape per op, float32 unless --dtypes, fewer reps")
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    ap.add_argument("--dtypes", default=None,
                    help="comma-separated subset of float32,bfloat16 (default both)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="results folder")
    ap.add_argument("--no-model", action="store_true", help="skip the whole-AlexNet section")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile provider")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="GPU: also time each call inside a CUDA graph (no launch overhead, L2 not flushed)")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="time budget: op cases and training steps not started by then are skipped (listed)")
    ap.add_argument("--tag", default="", help="suffix for the result file names, e.g. _fp32")
    ap.add_argument("--name", default=None,
                    help="result file stem inside --out instead of <device>_<date>[_quick]<tag>")
    ap.add_argument("--json-only", action="store_true",
                    help="write only the JSON, after every op case (bench/tools/gpu_summary.py makes "
                         "tables later)")
    ap.add_argument("--order", choices=["dtype", "breadth"], default="dtype",
                    help="dtype: every case in float32, then bfloat16 (default); breadth: the first shape "
                         "of every op in each dtype before any second shape (a budget cut keeps one per op)")
    ap.add_argument("--batch", type=int, default=128, help="batch of GPU timings and of memory counts")
    ap.add_argument("--cpu-batch", type=int, default=8, help="batch of the CPU-path op timings")
    ap.add_argument("--cpu-model-batch", type=int, default=2, help="batch of the CPU-path training step")
    args = ap.parse_args(argv)
    ops = [o for o in args.ops.split(",") if o]
    unknown = set(ops) - set(OPS)
    if unknown:
        ap.error(f"unknown ops {sorted(unknown)}; choose from {OPS}")
    dnames = (args.dtypes or ("float32" if args.quick else "float32,bfloat16")).split(",")
    if set(dnames) - set(DTYPES):
        ap.error(f"unknown dtypes {sorted(set(dnames) - set(DTYPES))}; choose from {list(DTYPES)}")
    dtypes = [DTYPES[d] for d in dnames]

    gpu = torch.cuda.is_available()
    device = torch.device("cuda") if gpu else torch.device("cpu")
    notes = []
    if INTERPRET:
        notes.append("WARNING: TRITON_INTERPRET is set: fused kernels run in the Triton interpreter and "
                     "their timings are meaningless; unset it for this benchmark.")
    if not gpu:
        notes.append(f"Kernel timings need a CUDA GPU: none found, so this run gives memory figures "
                     f"(batch {args.batch}, counted on fake tensors) and CPU-path timings at batch "
                     f"{args.cpu_batch}.")
        notes.append("torch.compile is not timed on the CPU path (compiling one op takes ~20 s on 2 cores); "
                     "CPU-path timings are float32 only unless --dtypes is given (memory covers all dtypes).")
        notes.append("On the CPU path \"fused\" times what kernels.* does with CPU tensors (its plain-PyTorch"
                     " path, not the Triton kernels): a CPU speedup says nothing about the GPU.")
    cases = [c for c in CASES if c.op in ops]
    if args.quick:
        cases = [c for i, c in enumerate(cases) if all(d.op != c.op for d in cases[:i])]
    providers = {"eager": lambda op: EAGER[op]}
    if gpu and not args.no_compile:
        from torch._dynamo import config as dynamo_config
        # compiled_retainable's wrappers share one code object: up to 18 shape/dtype/op entries. Past the
        # limit dynamo would silently run eager; raise instead where this torch can.
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo_config, name):
                setattr(dynamo_config, name, max(getattr(dynamo_config, name), 64))
        if hasattr(dynamo_config, "fail_on_recompile_limit_hit"):
            dynamo_config.fail_on_recompile_limit_hit = True
        providers["compile"] = compiled
    providers["fused"] = lambda op: FUSED[op]
    stack = contextlib.ExitStack()
    if INTERPRET and not gpu:  # the interpreter would take minutes per op: use the ops' plain-PyTorch path
        if hasattr(kernels, "triton_disabled"):
            stack.enter_context(kernels.triton_disabled())
            notes.append("CPU tensors use kernels' plain-PyTorch path (kernels.triton_disabled()).")
        else:
            del providers["fused"]
            notes.append("Fused ops not timed on the CPU path under TRITON_INTERPRET.")

    for n in notes:
        print(n, flush=True)
    meta = env_info(device)
    print(f"device: {meta['device']} | torch {meta['torch']} | triton {meta['triton']} | cuda {meta['cuda']} "
          f"| commit {meta['git_commit']} | {meta['datetime_utc']}"
          + (f" | load {meta['load_average']}" if "load_average" in meta else ""), flush=True)

    copy = copy_bandwidth_gbs(device, 1.0 if gpu else 0.25)
    print(f"copy bandwidth: {copy['gbs']:.0f} GB/s ({copy['buffer_gib']} GiB float32 copy_, read + write)",
          flush=True)
    times, checks, memory, skipped = [], {}, [], []
    t_start = time.perf_counter()
    deadline = t_start + args.max_seconds if args.max_seconds else float("inf")
    model: dict = {} if args.no_model else model_memory(args, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    default_name = f"{device_slug(device)}_{meta['date']}{'_quick' if args.quick else ''}{args.tag}"
    stem = out / (args.name or default_name)
    res = {"meta": meta, "config": {**vars(args), "dtypes": dnames, "ops": ops, "p_drop": P_DROP,
                                    "bytes_model": "see bench/fused_vs_eager.py docstring"},
           "notes": notes, "copy_bandwidth": copy, "times": times, "checks": checks, "memory": memory,
           "model": model, "skipped_for_time": skipped, "complete": False}
    argv_text = " ".join(["python bench/fused_vs_eager.py", *(sys.argv[1:] if argv is None else argv)])
    # work items (dtype, case); None as the case: the model's training step in that dtype
    if args.order == "breadth":
        rank = {c: sum(d.op == c.op for d in cases[:i]) for i, c in enumerate(cases)}
        work = [(dt, c) for r in sorted(set(rank.values())) for dt in dtypes for c in cases if rank[c] == r]
        work += [(dt, None) for dt in dtypes]
    else:  # float32 first: ops, then the model, so a cut-short run keeps the most
        work = [(dt, c) for dt in dtypes for c in [*cases, None]]
    with stack:
        for i, (dtype, case) in enumerate(work):
            dname = str(dtype).split(".")[-1]
            last_of_dtype = all(d != dtype for d, _ in work[i + 1:]) or case is None
            if case is not None:
                if time.perf_counter() > deadline:
                    skipped.append(f"{case.name} {dname}")
                    continue
                provs = {p: f(case.op) for p, f in providers.items()}
                batch = args.batch if gpu else args.cpu_batch
                c = {}
                if gpu or dtype == torch.float32 or args.dtypes:
                    variants = {}
                    if "compile" in provs:
                        variants["compile"] = (compiled_retainable(case.op), no_donation())
                    r, c = op_timings(case, dtype, batch, provs, device, args.quick,
                                      gpu and args.cuda_graph, variants)
                    times += r
                    checks[f"{case.name} {dname}"] = c
                mem_provs = {"eager": EAGER[case.op], "fused": FUSED[case.op]}
                if "compile" in provs:
                    mem_provs["compile"] = provs["compile"]
                memory += op_memory(case, dtype, args.batch, mem_provs, device)
                bad = {p: v for p, v in c.items() if "error" in v or not v.get("ok", True)}
                print(f"  {case.name:28s} {dname:8s} done ({time.perf_counter() - t_start:5.1f} s)"
                      + (f"  problems: {bad}" if bad else ""), flush=True)
            elif model and "error" not in model:
                model["train_step"] += model_steps(args, device, dtype, deadline, skipped)
                print(f"  AlexNet training step    {dname:8s} done ({time.perf_counter() - t_start:5.1f} s)",
                      flush=True)
            if args.json_only or last_of_dtype:  # partial results survive a run that is cut short
                write_results(res, stem, argv_text, json_only=args.json_only)
    if not gpu:
        meta["load_average_end"] = os.getloadavg()
    if skipped:
        notes.append(f"Skipped for the --max-seconds {args.max_seconds} budget: {', '.join(skipped)}.")
    res["complete"] = not skipped
    tabs = write_results(res, stem, argv_text, json_only=args.json_only)
    for title, rows in tabs.items():
        cpu_note = "" if gpu or title != "Op timings" else f" (CPU path, batch {args.cpu_batch})"
        print(f"\n== {title}{cpu_note}")
        print(render_text(rows))
    if model and "error" in model:
        print(f"\nmodel section skipped: {model['error']}")
    if skipped:
        print(f"\n{notes[-1]}")
    formats = "" if args.json_only else ", .md, .png"
    print(f"\nwrote {stem}.json{formats} ({time.perf_counter() - t_start:.0f} s)")
    return 0


def write_results(res, stem: Path, argv_text: str, json_only: bool = False) -> dict:
    """Annotate, evaluate the targets and write JSON, markdown and PNG (only the JSON with ``json_only``:
    written to a temporary name and renamed, so a run killed mid-write leaves the previous one);
    returns the tables."""
    meta, copy, gpu = res["meta"], res["copy_bandwidth"], res["meta"]["device_type"] == "cuda"
    annotate(res["times"], copy["gbs"])
    res["targets"] = evaluate_targets(res["times"], res["model"], gpu)
    tabs = tables(res)
    tmp = stem.with_name(stem.name + ".json.tmp")
    tmp.write_text(json.dumps(res, indent=1, default=str))
    os.replace(tmp, stem.with_name(stem.name + ".json"))
    if json_only:
        return tabs
    head = [f"# fused vs eager vs torch.compile: {meta['device']}", "",
            f"{meta['datetime_utc']} | torch {meta['torch']} | triton {meta['triton']} | "
            f"CUDA {meta['cuda']} | python {meta['python']} | commit `{meta['git_commit']}`", "",
            f"Copy bandwidth: {copy['gbs']:.0f} GB/s. Command: `{argv_text}`"
            + (f". Load average at start {fmt_load(meta.get('load_average'))}, at end "
               f"{fmt_load(meta.get('load_average_end'))} (2 cores shared)." if not gpu else ""),
            ""] + [f"- {n}" for n in res["notes"]]
    if not res["complete"]:
        head.append("- INCOMPLETE: written before the run finished, or parts skipped for time.")
    body = [f"\n## {t}\n\n{render_md(rows)}" for t, rows in tabs.items()]
    if res["model"] and "error" in res["model"]:
        body.append(f"\nModel section skipped: {res['model']['error']}")
    stem.with_suffix(".md").write_text("\n".join(head + body) + "\n")
    try:
        plot(res, stem.with_suffix(".png"))
    except Exception as exc:
        print(f"chart not written: {exc!r}")
    return tabs


if __name__ == "__main__":
    sys.exit(main())
