"""Nsight Compute on every fused kernel at AlexNet's batch-128 shapes, beside bench/tools/sass_cost.py's
prediction.

    python bench/tools/ncu_kernels.py run --out p4_ncu.json [--raw p4_ncu_raw.csv] [--budget 90]  # GPU
    python bench/tools/ncu_kernels.py launch --manifest m.json   # what ncu profiles (run by ``run``)
    python bench/tools/ncu_kernels.py predict --out DIR          # sass_cost for this Triton, if the committed
                                                                 # prediction is not of these kernels
    python bench/tools/ncu_kernels.py stamp FILE                 # kernels' fingerprint into a sass_cost JSON
    python bench/tools/ncu_kernels.py join --manifest m.json --csv raw.csv --out p4.json  # parse + join again

``launch`` runs each op (sass_cost.py's OPS: the same calls and shapes as the prediction) forward and
backward once to compile and warm up, then, between cudaProfilerStart and Stop, records each case's launches
(``kernels._common.recording``: kernel, grid, warps; nothing runs) and runs the case for real. ``run``
profiles that with ``ncu --profile-from-start off --clock-control none`` restricted to the project's Triton
kernels (by name), a few metrics, and exports the report; ``ncu --import ... --csv --page raw --print-units
base`` gives one CSV row per launch. ``join`` matches the rows to the manifest in launch order (kernel name
and grid size must agree), and each launch to its prediction by (op, shape, dtype, direction, launch index).

Predicted vs measured: sass_cost's warp-instructions per program x warps x programs against
``smsp__inst_executed.sum`` (both count every issued warp-instruction; sass_cost weights loops by the
declared mean trip counts), and its thread-instructions (x 32 lanes, predicated-off lanes included) against
``sm__sass_thread_inst_executed.sum`` (active lanes only, so at most the prediction); registers; theoretical
occupancy (sass_cost's warps per SM of 64) against achieved. DRAM bytes against the minimal-bytes model.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: The metrics asked for (few: each costs replay passes). Launch metrics cost nothing.
METRICS = [
    "gpu__time_duration.sum",
    "dram__bytes_read.sum",
    "dram__bytes_write.sum",
    "smsp__inst_executed.sum",
    "sm__sass_thread_inst_executed.sum",
    "sm__warps_active.avg.pct_of_peak_sustained_active",
    "sm__maximum_warps_per_active_cycle_pct",
    "launch__registers_per_thread",
    "launch__grid_size",
    "launch__block_size",
    "launch__waves_per_multiprocessor",
]
#: If ncu rejects the list: names seen in Nsight Compute's own sections for years.
FALLBACK_METRICS = [
    "gpu__time_duration.sum",
    "dram__bytes.sum",
    "smsp__inst_executed.sum",
    "sm__warps_active.avg.pct_of_peak_sustained_active",
    "launch__registers_per_thread",
    "launch__grid_size",
]
#: kernels/ files whose code decides what the kernels compile to (the others: registration, modules).
NOT_KERNEL_SOURCES = {"__init__.py", "fusion.py", "nn.py", "patch.py", "reference.py"}
MAX_WARPS_PER_SM = 64


def kernels_fingerprint(root: Path = REPO) -> str:
    """sha256 of the kernel sources' code: their syntax trees without docstrings (comments and docs may
    change without making a prediction stale)."""
    import ast
    import hashlib
    h = hashlib.sha256()
    for path in sorted((root / "kernels").glob("*.py")):
        if path.name in NOT_KERNEL_SOURCES:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                    and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        h.update(path.name.encode() + b"\0" + ast.dump(tree).encode() + b"\0")
    return h.hexdigest()


def kernel_function_names(root: Path = REPO) -> list[str]:
    """The project's Triton kernels: ``def _..._kernel(`` in kernels/*.py (helpers are not launched)."""
    names = set()
    for path in (root / "kernels").glob("*.py"):
        names.update(re.findall(r"^\s*def (_\w+_kernel)\(", path.read_text(), flags=re.M))
    return sorted(names)


# ------------------------------------------------------------------------------------------- launch


def cases(dtypes=("float32", "bfloat16"), ops=None):
    from bench.tools.sass_cost import OPS

    out = []
    for op, spec in OPS.items():
        if ops and op not in ops:
            continue
        for chw in spec.shapes:
            for d in dtypes:
                out.append((op, spec, chw, d))
    return out


def launch_main(manifest_path: Path | None, batch: int, dtypes, ops=None, run: bool = True) -> dict:
    """Warm up every case, then (inside cudaProfilerStart/Stop) record and run each case once.
    ``run=False``: record only (the manifest of what a run would launch; nothing is computed)."""
    import torch

    from kernels._common import recording

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    todo = cases(dtypes, ops)
    inputs = {}
    for op, spec, chw, d in todo:  # warm-up: compiles every kernel outside the profiled range
        torch.manual_seed(0)
        if not run:
            x = torch.empty((batch, *chw), dtype=getattr(torch, d)).requires_grad_()
            inputs[(op, chw, d)] = (x, None)
            continue
        x = torch.randn((batch, *chw), device=device, dtype=getattr(torch, d)).requires_grad_()
        y = spec.call(x)
        dy = torch.randn_like(y)
        torch.autograd.grad(y, x, dy)
        inputs[(op, chw, d)] = (x, dy)
    gpu = gpu and run
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
    entries = []
    for op, spec, chw, d in todo:
        x, dy = inputs[(op, chw, d)]
        rec = {"fwd": [], "bwd": []}
        with recording(rec["fwd"].append):
            yr = spec.call(x)
        with recording(rec["bwd"].append):
            torch.autograd.grad(yr, x, torch.empty_like(yr))
        key = f"{op}|{'x'.join(map(str, (batch, *chw)))}|{d}"
        if gpu:
            torch.cuda.nvtx.range_push(key)
        if run:
            y = spec.call(x)
            torch.autograd.grad(y, x, dy)
        if gpu:
            torch.cuda.nvtx.range_pop()
        for direction in ("fwd", "bwd"):
            for i, launch in enumerate(rec[direction]):
                fn = getattr(launch.fn, "fn", launch.fn)
                programs = 1
                for g in launch.grid:
                    programs *= int(g)
                entries.append(
                    {
                        "op": op,
                        "shape": [batch, *chw],
                        "dtype": d,
                        "layout": "nchw",
                        "direction": direction,
                        "index": i,
                        "name": launch.name,
                        "function": fn.__name__,
                        "grid": [int(g) for g in launch.grid],
                        "programs": programs,
                        "num_warps": launch.num_warps,
                    }
                )
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
    manifest = {
        "batch": batch,
        "device": str(device),
        "launches": entries,
        "kernel_functions": kernel_function_names(),
    }
    if manifest_path is not None:
        Path(manifest_path).write_text(json.dumps(manifest, indent=1))
    return manifest


# -------------------------------------------------------------------------------------- CSV parsing


def _number(text: str):
    t = (text or "").strip().strip('"')
    if t in ("", "n/a", "N/A", "nan"):
        return None
    t = t.replace(",", "")  # thousands separators
    try:
        v = float(t)
    except ValueError:
        return None
    return int(v) if v.is_integer() and abs(v) < 2**62 else v


def _grid_programs(text: str):
    nums = [int(n) for n in re.findall(r"\d+", text or "")]
    if not nums:
        return None
    p = 1
    for n in nums:
        p *= n
    return p


def parse_ncu_csv(text: str) -> list[dict]:
    """Rows of ``ncu --csv --page raw`` (any units mode): one dict per profiled launch with ``id``,
    ``kernel``, ``programs`` (grid size), ``block``, and ``metrics`` {name: number}. Tolerates ncu's own
    ``==PROF==`` / ``==WARNING==`` lines and application output before the header, a units row after it,
    quoted numbers with thousands separators, and "n/a"."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith('"ID"')), None)
    if start is None:
        return []
    body = [line for line in lines[start:] if line.strip() and not line.startswith("==")]
    reader = csv.reader(io.StringIO("\n".join(body)))
    header = next(reader)
    col = {name.strip(): i for i, name in enumerate(header)}
    fixed = {
        "ID",
        "Process ID",
        "Process Name",
        "Host Name",
        "Kernel Name",
        "Context",
        "Stream",
        "Block Size",
        "Grid Size",
        "Device",
        "CC",
        "Function Name",
        "Demangled Name",
        "Kernel Time",
        "Estimated Time",
    }
    rows = []
    for rec in reader:
        if len(rec) < len(header) // 2:
            continue

        def get(name, rec=rec):
            return rec[col[name]] if name in col and col[name] < len(rec) else ""

        rid = _number(get("ID"))
        if rid is None:  # the units row
            continue
        kernel = (get("Kernel Name") or get("Function Name") or get("Demangled Name")).strip()
        kernel = re.sub(r"\(.*$", "", kernel).strip()  # "name(args)" -> "name"
        metrics = {name: _number(rec[i]) for name, i in col.items() if name not in fixed and i < len(rec)}
        programs = _grid_programs(get("Grid Size"))
        if programs is None and metrics.get("launch__grid_size") is not None:
            programs = int(metrics["launch__grid_size"])
        rows.append(
            {
                "id": int(rid),
                "kernel": kernel,
                "programs": programs,
                "block": get("Block Size").strip(),
                "metrics": metrics,
            }
        )
    rows.sort(key=lambda r: r["id"])
    return rows


# ------------------------------------------------------------------------------------------ joining


def load_predictions(path: Path | None) -> dict:
    """{(op, shape tuple, dtype, layout, direction): prediction row} of a sass_cost JSON."""
    if path is None or not Path(path).exists():
        return {}
    data = json.loads(Path(path).read_text())
    return {(r["op"], tuple(r["shape"]), r["dtype"], r["layout"], r["direction"]): r for r in data["rows"]}


def _ratio(a, b):
    return round(a / b, 4) if a is not None and b not in (None, 0) else None


def _same_kernel(ncu_name: str, function: str) -> bool:
    """ncu's name for a Triton kernel is its Python name (older Triton appended a specialisation suffix)."""
    return ncu_name == function or ncu_name.startswith(function + "_")


def join(manifest: dict, rows: list[dict], predictions: dict) -> dict:
    """Match ncu rows to the manifest in launch order, then each launch to its prediction."""
    launches, unmatched = [], []
    j = 0
    for m in manifest["launches"]:
        k = j
        while k < len(rows) and not (
            _same_kernel(rows[k]["kernel"], m["function"]) and (rows[k]["programs"] in (None, m["programs"]))
        ):
            k += 1
        rec = dict(m)
        if k < len(rows):
            if k > j:
                rec["skipped_rows"] = [rows[i]["id"] for i in range(j, k)]
            row = rows[k]
            j = k + 1
            me = row["metrics"]
            dram = me.get("dram__bytes.sum")
            if dram is None and (
                me.get("dram__bytes_read.sum") is not None or me.get("dram__bytes_write.sum")
            ):
                dram = (me.get("dram__bytes_read.sum") or 0) + (me.get("dram__bytes_write.sum") or 0)
            rec["ncu_id"] = row["id"]
            rec["measured"] = {
                "duration_ns": me.get("gpu__time_duration.sum"),
                "dram_bytes": dram,
                "dram_read": me.get("dram__bytes_read.sum"),
                "dram_write": me.get("dram__bytes_write.sum"),
                "warp_instructions": me.get("smsp__inst_executed.sum"),
                "thread_instructions": me.get("sm__sass_thread_inst_executed.sum"),
                "achieved_occupancy_pct": me.get("sm__warps_active.avg.pct_of_peak_sustained_active"),
                "theoretical_occupancy_pct": me.get("sm__maximum_warps_per_active_cycle_pct"),
                "registers": me.get("launch__registers_per_thread"),
                "waves": me.get("launch__waves_per_multiprocessor"),
            }
        else:
            unmatched.append(
                f"{m['op']} {m['shape']} {m['dtype']} {m['direction']} #{m['index']} {m['function']}"
            )
        p = predictions.get((m["op"], tuple(m["shape"]), m["dtype"], m["layout"], m["direction"]))
        details = (p or {}).get("kernel_details") or []
        d = details[m["index"]] if m["index"] < len(details) else None
        if d is not None and d.get("function") != m["function"]:
            d = next((x for x in details if x.get("function") == m["function"]), None)
        if d is not None:
            warps = d["warp_instructions_per_program"] * d["num_warps"] * m["programs"]
            rec["predicted"] = {
                "warp_instructions": round(warps),
                "thread_instructions": round(warps * 32),
                "registers": d.get("registers"),
                "spill_bytes": d.get("spill_bytes"),
                "theoretical_occupancy_pct": round(100 * d["occupancy_warps"] / MAX_WARPS_PER_SM, 1)
                if d.get("occupancy_warps") is not None
                else None,
                "grid_matches": d.get("grid") == m["grid"],
            }
        if "measured" in rec and "predicted" in rec:
            me, pr = rec["measured"], rec["predicted"]
            rec["measured_over_predicted"] = {
                "warp_instructions": _ratio(me["warp_instructions"], pr["warp_instructions"]),
                "thread_instructions": _ratio(me["thread_instructions"], pr["thread_instructions"]),
            }
        launches.append(rec)
    # per case and direction: sums over its launches, per minimal byte
    by_case: dict = {}
    for rec in launches:
        by_case.setdefault((rec["op"], tuple(rec["shape"]), rec["dtype"], rec["direction"]), []).append(rec)
    out_cases = []
    for (op, shape, dtype, direction), recs in by_case.items():
        p = predictions.get((op, shape, dtype, "nchw", direction)) or {}
        mb = p.get("minimal_bytes")
        c = {
            "op": op,
            "shape": list(shape),
            "dtype": dtype,
            "direction": direction,
            "kernels": [r["function"] for r in recs],
            "minimal_bytes": mb,
            "predicted_instructions_per_byte": p.get("instructions_per_byte"),
            "predicted_registers": p.get("registers"),
        }
        if all("measured" in r for r in recs):

            def s(key, recs=recs):
                vals = [r["measured"][key] for r in recs]
                return sum(vals) if all(v is not None for v in vals) else None

            dur, dram, ti, wi = (
                s("duration_ns"),
                s("dram_bytes"),
                s("thread_instructions"),
                s("warp_instructions"),
            )
            c.update(
                duration_us=dur / 1e3 if dur else None,
                dram_bytes=dram,
                dram_over_minimal=_ratio(dram, mb),
                minimal_gbs=round(mb / dur, 1) if mb and dur else None,  # bytes per ns = GB/s
                dram_gbs=round(dram / dur, 1) if dram and dur else None,
                measured_thread_instructions_per_byte=_ratio(ti, mb),
                measured_warp_instructions_x32_per_byte=_ratio(wi * 32 if wi is not None else None, mb),
                registers=max((r["measured"]["registers"] or 0) for r in recs) or None,
                achieved_occupancy_pct=min(
                    (
                        r["measured"]["achieved_occupancy_pct"]
                        for r in recs
                        if r["measured"]["achieved_occupancy_pct"] is not None
                    ),
                    default=None,
                ),
            )
            c["issued_over_predicted"] = _ratio(
                c["measured_warp_instructions_x32_per_byte"], c["predicted_instructions_per_byte"]
            )
        out_cases.append(c)
    return {
        "launches": launches,
        "cases": out_cases,
        "unmatched": unmatched,
        "rows_profiled": len(rows),
        "launches_expected": len(manifest["launches"]),
    }


# ------------------------------------------------------------------------------------- predictions


def committed_prediction(triton_version: str) -> Path | None:
    """The newest bench/results/sass_cost_<triton>_*.json whose kernels fingerprint is this tree's."""
    fp = kernels_fingerprint()
    for path in sorted(
        glob.glob(str(REPO / "bench" / "results" / f"sass_cost_{triton_version}_*.json")), reverse=True
    ):
        try:
            meta = json.loads(Path(path).read_text())["meta"]
        except (OSError, ValueError, KeyError):
            continue
        if meta.get("kernels_sha256") == fp:
            return Path(path)
    return None


def predict_main(out_dir: Path, processes: int, timeout: float, force: bool = False) -> Path | None:
    """The committed prediction if it is of these kernels and this Triton; else run sass_cost (NCHW,
    float32 and bfloat16) into ``out_dir`` and stamp it."""
    import triton

    found = None if force else committed_prediction(triton.__version__)
    if found:
        print(
            f"predict: committed {found.relative_to(REPO)} is of these kernels (triton {triton.__version__})"
        )
        return found
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [
        sys.executable,
        str(REPO / "bench" / "tools" / "sass_cost.py"),
        "--layouts",
        "nchw",
        "--quiet",
        "--processes",
        str(processes),
        "--out",
        str(out_dir),
    ]
    print(
        f"predict: no committed prediction of these kernels for triton {triton.__version__}: "
        + " ".join(cmd[1:]),
        flush=True,
    )
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        if p.returncode not in (0, 1):
            print(f"predict: sass_cost failed ({p.returncode}): {p.stderr[-1500:]}", flush=True)
    except subprocess.TimeoutExpired:
        print(f"predict: sass_cost ran past {timeout:.0f} s", flush=True)
        return None
    hits = sorted(out_dir.glob("sass_cost_*.json"))
    if not hits:
        return None
    stamp(hits[-1], live=True)
    print(f"predict: {hits[-1]} in {time.perf_counter() - t0:.0f} s", flush=True)
    return hits[-1]


def stamp(path: Path, live: bool = False) -> None:
    data = json.loads(Path(path).read_text())
    data["meta"]["kernels_sha256"] = kernels_fingerprint()
    data["meta"]["kernels_sha256_files"] = "kernels/*.py except " + ", ".join(sorted(NOT_KERNEL_SOURCES))
    if live:
        data["meta"]["made_on_the_gpu_machine"] = True
    Path(path).write_text(json.dumps(data, indent=1, default=str) + "\n")


# ------------------------------------------------------------------------------------------- ncu run


def _run(cmd, timeout):
    """(rc, stdout, stderr, seconds); on timeout the whole process group (ncu and the launcher) is killed."""
    import signal
    t0 = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled, or the CPU path
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                         start_new_session=True, env=env)
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err, time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                break
            try:
                out, err = p.communicate(timeout=10)
                break
            except subprocess.TimeoutExpired:
                out, err = "", ""
        note = f"timed out after {timeout:.0f} s; " + (err or "")[-1000:]
        return None, out or "", note, time.perf_counter() - t0


def valid_metrics(ncu: str, wanted: list[str]) -> tuple[list[str], str]:
    """The metrics whose base name ``ncu --query-metrics`` lists for this GPU (all, if the query fails)."""
    rc, out, err, _ = _run([ncu, "--query-metrics"], 30)
    if rc != 0 or not out:
        return wanted, f"--query-metrics failed ({rc}): {(err or out)[-300:]}"
    names = set(re.findall(r"^\s*\"?([a-z0-9_]+__[a-z0-9_]+)", out, flags=re.M))
    keep = [m for m in wanted if m.split(".")[0] in names or m.startswith(("launch__", "gpu__time_duration"))]
    if len(keep) <= sum(m.startswith(("launch__", "gpu__time_duration")) for m in wanted):
        return wanted, "--query-metrics listed none of the counters asked for: all kept"
    return keep, f"dropped (not listed): {sorted(set(wanted) - set(keep))}"


def run_main(
    out: Path,
    raw: Path | None,
    budget: float,
    predictions_dir: Path,
    batch: int,
    dtypes,
    rehearse: bool = False,
    ncu: str | None = None,
    ops: list[str] | None = None,
) -> dict:
    from bench.common import commit_info
    from bench.tools.gpu_parts import find_ncu, write_json

    t0 = time.perf_counter()
    ncu = ncu or find_ncu()
    import triton

    res = {
        "part": "4 Nsight Compute per fused kernel",
        "batch": batch,
        "dtypes": list(dtypes),
        "layout": "nchw",
        "triton": triton.__version__,
        "ncu": ncu,
        "commit": commit_info().get("git_commit"),
        "kernels_sha256": kernels_fingerprint(),
        "notes": [],
    }
    pred = None
    live = sorted(predictions_dir.glob("sass_cost_*.json")) if predictions_dir.exists() else []
    if live:
        pred = live[-1]
        res["predictions"] = f"made on this machine for these kernels: {pred.name}"
    else:
        pred = committed_prediction(triton.__version__)
        if pred:
            res["predictions"] = f"committed, same kernels and triton: {pred.relative_to(REPO)}"
        else:
            cands = sorted(glob.glob(str(REPO / "bench" / "results" / "sass_cost_*.json")))
            pred = Path(cands[-1]) if cands else None
            res["predictions"] = (
                f"STALE: no prediction of these kernels for triton {triton.__version__}; using "
                f"{pred.name if pred else 'none'}"
            )
    res["predictions_file"] = str(pred) if pred else None
    write_json(out, res)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu_check_ncu_{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    manifest_path = tmp / "manifest.json"
    launcher = [
        sys.executable,
        str(REPO / "bench" / "tools" / "ncu_kernels.py"),
        "launch",
        "--manifest",
        str(manifest_path),
        "--batch",
        str(batch),
        "--dtypes",
        ",".join(dtypes),
    ] + (["--ops", ",".join(ops)] if ops else [])
    csv_text = ""
    if ncu is None:
        res["notes"].append("ncu not found: the launcher ran without it; measurements need ncu (rehearsal)")
        print(
            "ncu: not found; running the launcher alone (parser and joiner checked on the test fixture)",
            flush=True,
        )
        rc, so, se, dt = _run(launcher, budget)
        res["launcher"] = {"rc": rc, "seconds": round(dt, 1), "tail": (so + se)[-1500:]}
    else:
        metrics, note = valid_metrics(ncu, METRICS)
        res["notes"].append(f"metrics: {note}")
        names = kernel_function_names()
        rep = tmp / "p4"
        for attempt, ms in enumerate((metrics, FALLBACK_METRICS)):
            left = budget - (time.perf_counter() - t0) - 15
            if left < 20:
                res["notes"].append(f"attempt {attempt}: no time left")
                break
            cmd = [
                ncu,
                "--profile-from-start",
                "off",
                "--clock-control",
                "none",
                "--kernel-name",
                "regex:^(" + "|".join(names) + ")",
                "--launch-count",
                "1000",
                "--metrics",
                ",".join(ms),
                "-f",
                "-o",
                str(rep),
                *launcher,
            ]
            print(f"ncu: {len(ms)} metrics, at most {left:.0f} s ...", flush=True)
            rc, so, se, dt = _run(cmd, left)
            res[f"ncu_attempt_{attempt}"] = {
                "rc": rc,
                "seconds": round(dt, 1),
                "metrics": ms,
                "tail": (so + se)[-2000:],
            }
            print(f"ncu: rc {rc} in {dt:.0f} s", flush=True)
            report = rep.with_suffix(".ncu-rep")
            if report.exists():
                base = [ncu, "--import", str(report), "--csv", "--page", "raw"]
                for extra in (["--print-units", "base", "--print-metric-name", "name"],
                              ["--print-units", "base"], []):  # older ncu lacks the later options
                    rc2, csv_text, se2, _ = _run(base + extra, 120)
                    if rc2 == 0 and parse_ncu_csv(csv_text):
                        break
                res[f"ncu_import_{attempt}"] = {"rc": rc2, "options": extra, "stderr": (se2 or "")[-500:]}
                if parse_ncu_csv(csv_text):
                    break
            write_json(out, res)
        if raw is not None and csv_text:
            Path(raw).write_text(csv_text)
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        res["manifest_launches"] = len(manifest["launches"])
        rows = parse_ncu_csv(csv_text)
        res.update(join(manifest, rows, load_predictions(pred)))
        if ncu is not None and not rows:
            res["notes"].append("ncu gave no parsable rows: see ncu_attempt_* tails and the raw CSV")
    else:
        res["notes"].append("the launcher wrote no manifest: see the launcher / ncu output tails")
    res["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(out, res)
    matched = sum("measured" in r for r in res.get("launches", []))
    print(
        f"ncu: {matched} of {res.get('manifest_launches', 0)} launches measured, "
        f"{len(res.get('unmatched', []))} unmatched, {res['seconds']} s",
        flush=True,
    )
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("launch")
    a.add_argument("--manifest", type=Path, required=True)
    a.add_argument("--batch", type=int, default=128)
    a.add_argument("--dtypes", default="float32,bfloat16")
    a.add_argument("--ops", default=None)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--raw", type=Path, help="also write ncu's CSV there")
    r.add_argument("--budget", type=float, default=90.0)
    r.add_argument("--predictions-dir", type=Path, default=Path("/tmp/gpu_check_predictions"))
    r.add_argument("--batch", type=int, default=128)
    r.add_argument("--dtypes", default="float32,bfloat16")
    p = sub.add_parser("predict")
    p.add_argument("--out", type=Path, default=Path("/tmp/gpu_check_predictions"))
    p.add_argument("--processes", type=int, default=max(1, min(8, (os.cpu_count() or 2) // 2)))
    p.add_argument("--timeout", type=float, default=240.0)
    p.add_argument("--force", action="store_true")
    s = sub.add_parser("stamp")
    s.add_argument("file", type=Path)
    j = sub.add_parser("join")
    j.add_argument("--manifest", type=Path, required=True)
    j.add_argument("--csv", type=Path, required=True)
    j.add_argument("--predictions", type=Path)
    j.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "launch":
        m = launch_main(
            args.manifest, args.batch, args.dtypes.split(","), args.ops.split(",") if args.ops else None
        )
        print(f"launch: {len(m['launches'])} launches recorded and run", file=sys.stderr)
    elif args.cmd == "run":
        run_main(args.out, args.raw, args.budget, args.predictions_dir, args.batch, args.dtypes.split(","))
    elif args.cmd == "predict":
        predict_main(args.out, args.processes, args.timeout, args.force)
    elif args.cmd == "stamp":
        stamp(args.file)
    elif args.cmd == "join":
        res = join(
            json.loads(args.manifest.read_text()),
            parse_ncu_csv(args.csv.read_text()),
            load_predictions(args.predictions),
        )
        args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
