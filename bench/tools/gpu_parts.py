"""The parts of bench/tools/gpu_check.sh that are not a benchmark of their own (issue 9), one subcommand each.
Each writes its JSON (atomically, and again after every step) as soon as it has something:

    python bench/tools/gpu_parts.py env --out p1_env.json                   # 1. GPU, driver, versions, commit
    python bench/tools/gpu_parts.py model --out p5_model.json --budget 150  # 5. AlexNet step, saved bytes
    python bench/tools/gpu_parts.py train --out p7_train.json --budget 120  # 7a. train.run, built-in set
    python bench/tools/gpu_parts.py split --out p7_train.json               # 7b. two towers on one GPU
    python bench/tools/gpu_parts.py prepare                                 # here, before a GPU run

``--rehearse`` (all but env): tiny sizes on the CPU, the same code paths, so the GPU run is not the first.
Parts 2, 3, 4 and 6 are pytest (bench/tools/pytest_gpu.py), bench/fused_vs_eager.py and
bench/tools/ncu_kernels.py.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.common import PREPARED, commit_info, env_info, git_commit, source_fingerprint  # noqa: E402


def write_json(path: Path, data) -> None:
    """Write ``data`` to ``path`` through a temporary file: a run killed mid-write keeps the previous."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def update_json(path: Path, key: str, value) -> None:
    path = Path(path)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    write_json(path, data)


def short_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"


def run_cmd(cmd: list[str], timeout: float = 30) -> dict:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return {"rc": p.returncode, "out": (p.stdout + p.stderr).strip()[-3000:]}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"rc": None, "out": short_error(exc)}


def find_ncu() -> str | None:
    """ncu on PATH, else the usual install folders."""
    found = shutil.which("ncu")
    if found:
        return found
    import glob

    for pattern in (
        "/usr/local/cuda/bin/ncu",
        "/usr/local/cuda*/bin/ncu",
        "/opt/nvidia/nsight-compute/*/ncu",
    ):
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[-1]
    return None


# ------------------------------------------------------------------------------------ 1. environment


def part_env(out: Path) -> dict:
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    info = {
        "part": "1 environment",
        **env_info(device),
        **commit_info(),
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    info["cudnn"] = torch.backends.cudnn.version() if gpu else None
    if gpu:
        props = torch.cuda.get_device_properties(device)
        info["l2_cache_mb"] = round(getattr(props, "L2_cache_size", 0) / 2**20, 1) or None
        smi = run_cmd(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                "clocks.max.mem,power.limit,pstate,temperature.gpu",
                "--format=csv,noheader",
            ]
        )
        info["nvidia_smi"] = smi["out"]
        if smi["rc"] == 0 and smi["out"]:
            parts = [p.strip() for p in smi["out"].splitlines()[0].split(",")]
            info["driver"] = parts[1] if len(parts) > 1 else None
    ncu = find_ncu()
    info["ncu"] = ncu
    info["ncu_version"] = run_cmd([ncu, "--version"])["out"].splitlines()[-1] if ncu else None
    nvcc = shutil.which("nvcc")
    info["nvcc_version"] = run_cmd([nvcc, "--version"])["out"].splitlines()[-1] if nvcc else None
    for mod in ("torchvision", "hypothesis", "numpy", "xdist", "pytest_timeout"):
        try:
            m = __import__(mod)
            info[f"{mod}_version"] = getattr(m, "__version__", "present")
        except ImportError:
            info[f"{mod}_version"] = None
    write_json(out, info)
    print(
        f"env: {info['device']} | driver {info.get('driver')} | torch {info['torch']} | triton "
        f"{info['triton']} | cuda {info['cuda']} | commit {info['git_commit']} | sources match prepared: "
        f"{info.get('sources_match_prepared')} | ncu {info['ncu_version']}",
        flush=True,
    )
    return info


def part_prepare() -> None:
    """Here, before the GPU call: the commit and a fingerprint of the sources, in a file that travels with
    the working tree (the GPU machine gets no .git)."""
    status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    data = {
        "git_commit": git_commit(),
        "prepared_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sources_sha256": source_fingerprint(),
        "kernels_sha256": source_fingerprint(("kernels",)),
        "status": [line for line in status.splitlines() if line.strip()][:200],
    }
    write_json(PREPARED, data)
    print(
        f"wrote {PREPARED.relative_to(REPO)}: commit {data['git_commit']}, {len(data['status'])} changed"
    )


# ------------------------------------------------------------------------------- 5. AlexNet training step

#: Step providers in order of value: the uncompiled pair in both precisions first, the compiles last.
MODEL_ORDER = [
    ("float32", "eager"),
    ("float32", "fused"),
    ("bfloat16", "eager"),
    ("bfloat16", "fused"),
    ("float32", "compile"),
    ("float32", "compile_fused"),
    ("bfloat16", "compile"),
    ("bfloat16", "compile_fused"),
]


COMPILE_MIN_S = 50  # a compiled AlexNet step is not started with less left (its compile alone takes ~30-60 s)


def part_model(out: Path, budget_s: float, rehearse: bool = False, no_compile: bool = False) -> dict:
    from bench import fused_vs_eager as fve

    t0 = time.perf_counter()
    deadline = t0 + budget_s
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    cfg = None
    if rehearse:
        from alexnet.model import AlexNetConfig

        cfg = AlexNetConfig(num_classes=10, image_size=67, width=0.25, init="kaiming")
    args = argparse.Namespace(
        batch=4 if rehearse else 128, quick=rehearse, no_compile=no_compile, cpu_model_batch=2
    )
    res = {
        "part": "5 AlexNet training step",
        "meta": env_info(device),
        "config": {
            "batch": args.batch,
            "budget_s": budget_s,
            "rehearse": rehearse,
            "network": "rehearsal: AlexNetConfig(10 classes, 67x67, width 0.25)"
            if rehearse
            else "the paper's AlexNet (AlexNetConfig(): 227x227, 1000 classes)",
            "step": "forward, cross-entropy, backward, SGD momentum 0.9, weight decay 5e-4; randn input",
        },
        "train_step": [],
        "skipped_for_time": [],
        "complete": False,
    }
    write_json(out, res)
    try:
        res["model_memory"] = fve.model_memory(args, device, cfg=cfg)
    except Exception as exc:  # noqa: BLE001 - recorded, the steps still run
        res["model_memory"] = {"error": short_error(exc)}
    write_json(out, res)
    order = [(d, p) for d, p in MODEL_ORDER if not (no_compile and p.startswith("compile"))]
    for dname, prov in order:
        dtype = getattr(torch, dname)
        if not gpu and dtype != torch.float32:
            continue  # the CPU path steps in float32 only
        if prov.startswith("compile") and deadline - time.perf_counter() < COMPILE_MIN_S:
            res["skipped_for_time"].append(f"training step {prov} {dname} (under {COMPILE_MIN_S} s left)")
            continue
        rows = fve.model_steps(
            args, device, dtype, deadline, res["skipped_for_time"], providers=[prov], cfg=cfg
        )
        res["train_step"] += rows
        for r in rows:
            print(
                f"  step {r['provider']:14s} {r['precision']:18s} "
                + (
                    f"{r['images_per_s']:9.1f} images/s (warm-up {r['warmup_s']:.1f} s)"
                    if "images_per_s" in r
                    else r.get("error", "")
                )
                + f"  [{time.perf_counter() - t0:5.1f} s]",
                flush=True,
            )
        write_json(out, res)
    res["complete"] = not res["skipped_for_time"]
    res["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(out, res)
    return res


# --------------------------------------------------------------------------------- 7a. train.run


def part_train(out: Path, budget_s: float, rehearse: bool = False, extra: list[str] | None = None) -> dict:
    """``python -m train.run`` on the built-in dataset, in its own folder, bounded by ``budget_s``."""
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="gpu_check_train_"))
    run_dir = work / "run"
    flags = ["--no-progress", "--seed", "0", "--out", str(run_dir)]
    if rehearse:
        flags += [
            "--epochs",
            "1",
            "--train-limit",
            "64",
            "--val-limit",
            "20",
            "--max-steps-per-epoch",
            "2",
            "--ten-crop",
            "off",
            "--workers",
            "0",
        ]
    else:
        flags += ["--workers", str(min(8, os.cpu_count() or 1))]
    flags += extra or []
    env = {
        **os.environ,
        "ALEXNET_DATA_CACHE": os.environ.get("ALEXNET_DATA_CACHE", str(work / "data")),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("TRITON_INTERPRET", None)  # the CPU path, or compiled kernels on a GPU
    cmd = [sys.executable, "-m", "train.run", *flags]
    res = {
        "part": "7a python -m train.run (built-in dataset)",
        "command": " ".join(cmd[1:]),
        "budget_s": budget_s,
        "rehearse": rehearse,
    }
    print(f"train: {' '.join(cmd[1:])} (at most {budget_s:.0f} s)", flush=True)
    lines: list[str] = []
    try:
        p = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + budget_s
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ)
        while True:
            if time.monotonic() > deadline:
                p.terminate()  # train.run saves and exits 143 on SIGTERM
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                res["timed_out"] = True
                break
            if sel.select(timeout=1.0):
                line = p.stdout.readline()
                if not line:
                    break
                lines.append(line.rstrip())
                print("  | " + line.rstrip(), flush=True)
        res["rc"] = p.wait()
    except Exception as exc:  # noqa: BLE001
        res["error"] = short_error(exc)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["output_tail"] = lines[-40:]
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        res["epochs"] = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    cfg = run_dir / "config.json"
    if cfg.exists():
        res["config"] = json.loads(cfg.read_text())
    if res.get("epochs"):
        last = res["epochs"][-1]
        res["final"] = {
            k: last.get(k)
            for k in (
                "epoch",
                "train_loss",
                "val_top1_error",
                "val_top5_error",
                "val_top1_error_10crop",
                "images_per_sec",
                "seconds",
            )
            if k in last
        }
        for k, v in last.items():
            if "10" in k and "top1" in k:
                res["final"][k] = v
    update_json(out, "train_run", res)
    shutil.rmtree(work, ignore_errors=True)
    print(f"train: rc {res.get('rc')} in {res['seconds']} s; final {res.get('final')}", flush=True)
    return res


# ---------------------------------------------------------------------------- 7b. two towers, one GPU

REL_SPLIT = 1e-4  # float32, TF32 off: the split layouts sum the same products in another order


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _staged(collective):
    """The collective through CPU copies (for a gloo build that refuses CUDA tensors)."""

    def run(out, inp, *args, **kwargs):
        o = out.cpu()
        collective(o, inp.cpu(), *args, **kwargs)
        out.copy_(o)

    return run


def _split_worker(out_dir: str, rehearse: bool, dropout: float, batch: int):
    from alexnet import parallel
    from alexnet.model import AlexNet, AlexNetConfig

    ctx = parallel.init_distributed(tp_size=2, backend="gloo")
    report: dict = {"rank": ctx.rank}
    if torch.cuda.is_available():
        ctx = dataclasses.replace(ctx, device=torch.device("cuda", 0))  # both ranks on the one GPU
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        probe = torch.arange(4.0, device=ctx.device)
        try:
            full = probe.new_empty(8)
            parallel._all_gather(full, probe, group=ctx.tp_group)
            report["gloo_cuda_collectives"] = "direct"
        except Exception as exc:  # noqa: BLE001
            report["gloo_cuda_collectives"] = f"staged through the CPU ({short_error(exc)})"
            parallel._all_gather = _staged(parallel._all_gather)
            parallel._reduce_scatter = _staged(parallel._reduce_scatter)
    report["device"] = str(ctx.device)
    cfg = (
        AlexNetConfig(num_classes=10, image_size=67, width=0.25, init="kaiming", dropout=dropout)
        if rehearse
        else AlexNetConfig(dropout=dropout)
    )
    torch.manual_seed(0)
    reference = AlexNet(cfg, ops="fused").to(ctx.device)
    module = parallel.parallelize(copy.deepcopy(reference), ctx)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g).to(ctx.device)
    y = torch.randint(0, cfg.num_classes, (batch,), generator=g).to(ctx.device)
    torch.manual_seed(7)  # the same dropout seed draw for both layouts
    ref_logits = reference(x)
    ref_loss = torch.nn.functional.cross_entropy(ref_logits, y)
    ref_loss.backward()
    torch.manual_seed(7)
    logits = module(x)
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    errors = {"logits": _rel(logits, ref_logits), "loss": _rel(loss, ref_loss)}
    grads = parallel.gather_towers({n: p.grad for n, p in module.named_parameters()}, ctx)
    errors["grads_worst"] = max(_rel(grads[n], p.grad) for n, p in reference.named_parameters())
    for m in (module, reference):
        torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4).step()
    full = parallel.full_state_dict(module, ctx)
    errors["state_after_step_worst"] = max(_rel(full[k], v) for k, v in reference.state_dict().items())
    report.update(
        errors=errors, loss=loss.item(), ref_loss=ref_loss.item(), ok=max(errors.values()) <= REL_SPLIT
    )
    with open(os.path.join(out_dir, f"rank{ctx.rank}.json"), "w") as f:
        json.dump(report, f)


def part_split(out: Path, rehearse: bool = False) -> dict:
    """Two ranks (gloo), both on the one GPU, each one tower of the fused model, against the one-device
    model: logits, loss, every gradient, the state after an SGD step; without and with dropout."""
    from alexnet.launch import launch
    from bench.tools.gpu_parts import _split_worker  # by its module's name: the ranks unpickle it from there

    t0 = time.perf_counter()
    res = {
        "part": "7b two towers, two gloo ranks on one GPU, vs one device",
        "tolerance_rel": REL_SPLIT,
        "runs": [],
    }
    for dropout in (0.0, 0.5):
        run = {"dropout": dropout, "batch": 4 if rehearse else 8}
        with tempfile.TemporaryDirectory() as tmp:
            out_dir = Path(tmp) / "out"
            out_dir.mkdir()
            try:
                launch(
                    _split_worker,
                    2,
                    args=(str(out_dir), rehearse, dropout, run["batch"]),
                    backend="gloo",
                    store_dir=str(Path(tmp) / "store"),
                )
                run["ranks"] = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]
                run["ok"] = (
                    all(r["ok"] for r in run["ranks"]) and run["ranks"][0]["loss"] == run["ranks"][1]["loss"]
                )
            except Exception as exc:  # noqa: BLE001
                run["error"] = short_error(exc)
                failures = getattr(exc, "failures", None)
                if failures:
                    run["rank_errors"] = [str(getattr(f, "exception", f))[-1500:] for f in failures]
                run["ok"] = False
        res["runs"].append(run)
        print(
            f"split: dropout {dropout}: {'PASS' if run['ok'] else 'FAIL'} "
            f"{run.get('error') or [r['errors'] for r in run.get('ranks', [])][:1]}",
            flush=True,
        )
        update_json(out, "split", res)
    res["ok"] = all(r["ok"] for r in res["runs"])
    res["seconds"] = round(time.perf_counter() - t0, 1)
    update_json(out, "split", res)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=["env", "model", "train", "split", "prepare"])
    ap.add_argument("--out", type=Path, help="the JSON file to write")
    ap.add_argument("--budget", type=float, default=120.0, help="seconds (model, train)")
    ap.add_argument("--rehearse", action="store_true", help="tiny sizes on the CPU: the code paths only")
    ap.add_argument("--no-compile", action="store_true", help="model: skip the torch.compile providers")
    ap.add_argument("train_flags", nargs="*", help="train: extra flags for train.run (after --)")
    args = ap.parse_args(argv)
    if args.part == "prepare":
        part_prepare()
        return 0
    if args.out is None:
        ap.error("--out is required")
    if args.part == "env":
        part_env(args.out)
    elif args.part == "model":
        part_model(args.out, args.budget, args.rehearse, args.no_compile)
    elif args.part == "train":
        res = part_train(args.out, args.budget, args.rehearse, args.train_flags)
        return 0 if res.get("rc") == 0 else 1
    elif args.part == "split":
        return 0 if part_split(args.out, args.rehearse)["ok"] else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
