"""Turn the files a GPU run of bench/tools/gpu_check.sh returned into the tables the README quotes.

    python bench/tools/gpu_summary.py FILES_AT_OF_CALL_1 FILES_AT_OF_CALL_2        # writes bench/results/
    python bench/tools/gpu_summary.py DIR --stdout-only                            # print, write nothing

Reads p1_env.json, p2_tests.json, p3_ops.json, p4_ncu.json, p5_model.json, p6_compile.json and p7_train.json
from the folders given (any subset; a later folder's file of the same name wins, except p1_env.json: the
first is kept and the others are checked to be the same card). Writes
``bench/results/<card>_<date>_gpu.{json,md,png}``: the merged JSON, the markdown (card, date, versions,
commit; every target of issue 9 and bench/README.md as PASS / MISS / N/A with its value; the op, memory,
Nsight Compute, training-step, test and train.run tables) and bench/fused_vs_eager.py's chart. Runs on the
CPU machine, no GPU needed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

FILES = ("p1_env", "p2_tests", "p3_ops", "p4_ncu", "p5_model", "p6_compile", "p7_train")
#: The static report is trusted where ncu's issued warp-instructions are within this factor of its estimate.
PREDICTION_BAND = (0.8, 1.25)
INSTR_PER_BYTE = 6.0  # bench/tools/sass_cost.py's NCHW budget
TRAIN_MIN_ACC = 70.0  # % top-1 of the built-in preset (README: 80.4% and 89.4% on the CPU with two seeds)


def load(dirs: list[Path]) -> tuple[dict, list[str]]:
    data: dict = {}
    notes = []
    for d in dirs:
        for name in FILES:
            path = Path(d) / f"{name}.json"
            if not path.exists():
                continue
            try:
                value = json.loads(path.read_text())
            except ValueError as exc:
                notes.append(
                    f"{path}: unreadable ({exc}); a run stopped mid-write leaves the previous version"
                )
                continue
            if name == "p1_env" and name in data:
                if value.get("device") != data[name].get("device"):
                    notes.append(f"{path}: another card ({value.get('device')}) than the first call's")
                continue
            data[name] = value
    return data, notes


def fmt(v, spec=".2f", none="-"):
    return none if v is None else format(v, spec)


def md_table(rows: list[list]) -> str:
    esc = lambda c: str(c).replace("|", "\\|").replace("\n", " ")
    out = ["| " + " | ".join(map(esc, rows[0])) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(out + ["| " + " | ".join(map(esc, r)) + " |" for r in rows[1:]])


# ---------------------------------------------------------------------------------------- ops merged


def merged_ops(data: dict) -> dict | None:
    """P3's eager and fused rows, P6's compile rows; 'x compile' from P6's own fused time (same process)."""
    from bench import fused_vs_eager as fve

    p3, p6 = data.get("p3_ops"), data.get("p6_compile")
    base = p3 or p6
    if base is None:
        return None
    times = [dict(r) for r in (p3 or {}).get("times", [])]
    have = {(r["case"], r["dtype"], r["direction"], r["provider"]) for r in times}
    for r in (p6 or {}).get("times", []):
        if (r["case"], r["dtype"], r["direction"], r["provider"]) not in have:
            times.append(dict(r))
    res = {
        **base,
        "times": times,
        "checks": {**(p6 or {}).get("checks", {}), **(p3 or {}).get("checks", {})},
        "memory": (p3 or p6).get("memory", []),
        "model": {},
    }
    fve.annotate(times, base["copy_bandwidth"]["gbs"])
    if p6:
        own = {(r["case"], r["dtype"], r["direction"], r["provider"]): r for r in p6.get("times", [])}
        for r in times:
            if r["provider"] == "fused":
                c = own.get((r["case"], r["dtype"], r["direction"], "compile"))
                f = own.get((r["case"], r["dtype"], r["direction"], "fused"))
                r["x_compile"] = c["ms"][0] / f["ms"][0] if c and f else None
    model = data.get("p5_model") or {}
    res["model"] = {
        "train_step": model.get("train_step", []),
        "saved_per_image": (model.get("model_memory") or {}).get("saved_per_image", {}),
    }
    gpu = base["meta"]["device_type"] == "cuda"
    res["targets"] = fve.evaluate_targets(times, res["model"], gpu)
    return res


# ------------------------------------------------------------------------------------------- targets


def targets(data: dict, ops: dict | None) -> list[dict]:
    out = []
    add = lambda target, item, value, ok: out.append(
        {
            "target": target,
            "item": item,
            "value": value,
            "status": "N/A" if ok is None else ("PASS" if ok else "MISS"),
        }
    )
    tests = data.get("p2_tests") or {}
    t = "every CUDA test passes on the card (issue 9)"
    for label, what in (
        ("cuda_marked", "pytest -m cuda"),
        ("equivalence_ops_on_gpu", "equivalence, ops on GPU"),
    ):
        sec = tests.get(label)
        if not sec:
            add(t, what, "not run", None)
            continue
        fails = [f for f in sec.get("failures", []) if not f.get("harness")]
        harness = [f for f in sec.get("failures", []) if f.get("harness")]
        val = ", ".join(f"{v} {k}" for k, v in sorted(sec.get("counts", {}).items()))
        val += "" if sec.get("finished") else " (stopped at its time limit)"
        val += f"; {len(harness)} harness failures (device mix) not counted" if harness else ""
        add(t, what, val, (not fails) if sec.get("counts") else None)
    if ops is not None:
        out += ops["targets"]
    else:
        add("op and model targets (bench/README.md)", "all", "no op benchmark in these files", None)
    ncu = data.get("p4_ncu") or {}
    t1 = f"static cost report trusted: ncu's issued instructions within {PREDICTION_BAND} of sass_cost's"
    t2 = f"<= {INSTR_PER_BYTE:g} thread-instructions per minimal byte, measured (NCHW)"
    cases = [c for c in ncu.get("cases", []) if c.get("measured_warp_instructions_x32_per_byte") is not None]
    if not cases:
        add(t1, "all", "no ncu measurements" + (f" ({'; '.join(ncu.get('notes', []))})" if ncu else ""), None)
    for c in cases:
        item = f"{c['op']} {'x'.join(map(str, c['shape'][1:]))} {c['dtype']} {c['direction']}"
        r = c.get("issued_over_predicted")
        add(
            t1,
            item,
            f"{fmt(r)}x ({fmt(c['measured_warp_instructions_x32_per_byte'], '.1f')} measured vs "
            f"{fmt(c['predicted_instructions_per_byte'], '.1f')} predicted per byte)",
            None if r is None else PREDICTION_BAND[0] <= r <= PREDICTION_BAND[1],
        )
    for c in cases:
        item = f"{c['op']} {'x'.join(map(str, c['shape'][1:]))} {c['dtype']} {c['direction']}"
        v = c["measured_warp_instructions_x32_per_byte"]
        add(t2, item, f"{v:.1f}", v <= INSTR_PER_BYTE)
    train = data.get("p7_train") or {}
    split = train.get("split")
    add(
        "two-tower split, both ranks on one GPU (gloo), equals one device (issue 9)",
        "logits, loss, grads, step",
        "; ".join(
            f"dropout {r['dropout']}: "
            + (
                r.get("error")
                or "worst rel " + fmt(max(max(x["errors"].values()) for x in r["ranks"]), ".1e")
            )
            for r in split["runs"]
        )
        if split
        else "not run",
        split.get("ok") if split else None,
    )
    run = train.get("train_run")
    t = (f"python -m train.run on the GPU, built-in dataset: finishes, top-1 accuracy >= {TRAIN_MIN_ACC:g}% "
         "(the 2-core CPU run: 80.4%)")
    if run:
        fin = run.get("final") or {}
        err = fin.get("val_top1_error")
        acc = None if err is None else 100 * (1 - err)
        stopped = run.get("timed_out")
        value = (f"rc {run.get('rc')}, {run.get('seconds')} s, {len(run.get('epochs', []))} epochs, top-1 "
                 f"accuracy {fmt(acc, '.1f')}%" + (", stopped at its time budget" if stopped else ""))
        ok = None if stopped else (run.get("rc") == 0 and acc is not None and acc >= TRAIN_MIN_ACC)
        add(t, "default preset", value, ok)
    else:
        add(t, "default preset", "not run", None)
    return out


# -------------------------------------------------------------------------------------------- tables


def ncu_table(ncu: dict, copy_gbs: float | None) -> list[list]:
    rows = [
        [
            "op",
            "shape",
            "dtype",
            "dir",
            "kernels",
            "time us",
            "min. GB/s",
            "% copy BW",
            "DRAM / min. bytes",
            "instr/B measured (issued x32)",
            "instr/B predicted",
            "measured / predicted",
            "thread-instr/B (active)",
            "regs",
            "regs pred.",
            "achieved occ. %",
        ]
    ]
    for c in ncu.get("cases", []):
        gbs = c.get("minimal_gbs")
        rows.append(
            [
                c["op"],
                "x".join(map(str, c["shape"])),
                c["dtype"],
                c["direction"],
                ", ".join(c["kernels"]),
                fmt(c.get("duration_us"), ".1f"),
                fmt(gbs, ".0f"),
                fmt(100 * gbs / copy_gbs if gbs and copy_gbs else None, ".0f"),
                fmt(c.get("dram_over_minimal")),
                fmt(c.get("measured_warp_instructions_x32_per_byte"), ".1f"),
                fmt(c.get("predicted_instructions_per_byte"), ".1f"),
                fmt(c.get("issued_over_predicted")),
                fmt(c.get("measured_thread_instructions_per_byte"), ".1f"),
                fmt(c.get("registers"), "d"),
                fmt(c.get("predicted_registers"), "d"),
                fmt(c.get("achieved_occupancy_pct"), ".0f"),
            ]
        )
    return rows


def model_table(model: dict) -> list[list]:
    rows = [
        ["provider", "precision", "batch", "images/s", "ms/step [p20-p80]", "peak MB", "warm-up s", "note"]
    ]
    for r in model.get("train_step", []):
        rows.append(
            [
                r["provider"],
                r["precision"],
                r["batch"],
                fmt(r.get("images_per_s"), ".0f"),
                f"{r['ms'][0]:.2f} [{r['ms'][1]:.2f}-{r['ms'][2]:.2f}]" if "ms" in r else "-",
                fmt(r.get("peak_allocated") and r["peak_allocated"] / 1e6, ".0f"),
                fmt(r.get("warmup_s"), ".1f"),
                r.get("error", ""),
            ]
        )
    for k, v in ((model.get("model_memory") or {}).get("saved_per_image") or {}).items():
        rows.append(
            [
                f"saved per image: {k}",
                "float32",
                v.get("batch", "-"),
                "-",
                "-",
                "-",
                "-",
                f"{v['bytes_per_image'] / 1e6:.3f} MB ({v['method']})"
                if "bytes_per_image" in v
                else v.get("error", ""),
            ]
        )
    return rows


def render(data: dict, notes: list[str]) -> tuple[str, dict]:
    from bench import fused_vs_eager as fve

    env = data.get("p1_env") or {}
    ops = merged_ops(data)
    tg = targets(data, ops)
    card = env.get("device") or (ops or {}).get("meta", {}).get("device", "unknown device")
    date = env.get("date") or (ops or {}).get("meta", {}).get("date", "")
    lines = [
        f"# GPU run: {card}, {date}",
        "",
        f"{env.get('datetime_utc', '')} | driver {env.get('driver')} | torch {env.get('torch')} | triton "
        f"{env.get('triton')} | CUDA {env.get('cuda')} | python {env.get('python')} | commit "
        f"`{env.get('git_commit')}` ({env.get('commit_source')}; the device's git said "
        f"{env.get('git_commit_by_git')}) | "
        f"ncu {env.get('ncu_version')}",
        "",
    ]
    if ops:
        lines.append(f"Copy bandwidth measured in the op run: {ops['copy_bandwidth']['gbs']:.0f} GB/s.")
    lines += [f"- {n}" for n in notes]
    counts = {s: sum(t["status"] == s for t in tg) for s in ("PASS", "MISS", "N/A")}
    lines += [
        "",
        f"## Targets ({counts['PASS']} PASS, {counts['MISS']} MISS, {counts['N/A']} N/A)",
        "",
        md_table(
            [["target", "item", "value", "status"]]
            + [[t["target"], t["item"], t["value"], t["status"]] for t in tg]
        ),
    ]
    if ops:
        tabs = fve.tables(ops)
        for title in ("Op timings", "Saved for backward"):
            lines += [
                "",
                f"## {title}" + (" (compile columns from part 6)" if title == "Op timings" else ""),
                "",
                md_table(tabs[title]),
            ]
        skipped = (data.get("p3_ops") or {}).get("skipped_for_time", []) + (data.get("p6_compile") or {}).get(
            "skipped_for_time", []
        )
        if skipped:
            lines.append(f"\nSkipped for time: {', '.join(skipped)}.")
    ncu = data.get("p4_ncu")
    if ncu:
        lines += [
            "",
            "## Nsight Compute per kernel (NCHW, batch 128) beside sass_cost's prediction",
            "",
            f"Predictions: {ncu.get('predictions')}. {ncu.get('rows_profiled', 0)} launches profiled, "
            f"{len(ncu.get('unmatched', []))} of {ncu.get('launches_expected', 0)} unmatched. "
            "instr/B measured = smsp__inst_executed x 32 / minimal bytes (every lane of an issued "
            "warp-instruction, as sass_cost counts); thread-instr/B = sm__sass_thread_inst_executed "
            "(active lanes only).",
            "",
            md_table(ncu_table(ncu, ops["copy_bandwidth"]["gbs"] if ops else None)),
        ]
        lines += [f"- {n}" for n in ncu.get("notes", [])]
    model = data.get("p5_model")
    if model:
        lines += [
            "",
            f"## AlexNet training step ({model.get('config', {}).get('network')})",
            "",
            md_table(model_table(model)),
        ]
        if model.get("skipped_for_time"):
            lines.append(f"\nSkipped for time: {', '.join(model['skipped_for_time'])}.")
    tests = data.get("p2_tests")
    if tests:
        lines += ["", "## Tests on the GPU", ""]
        for label, sec in tests.items():
            lines.append(
                f"- {label}: {sec.get('counts')} in {sec.get('seconds')} s, "
                f"{'finished' if sec.get('finished') else 'STOPPED at its time limit'} "
                f"(max examples {sec.get('max_examples')}, ops on {sec.get('ops_on')})"
            )
            for f in sec.get("failures", [])[:40]:
                msg = (f.get("message") or "").splitlines()
                tag = "[harness] " if f.get("harness") else ""
                lines.append(f"  - {tag}`{f['id']}`: {msg[0][:300] if msg else ''}")
    train = data.get("p7_train") or {}
    if train.get("train_run"):
        run = train["train_run"]
        lines += [
            "",
            "## python -m train.run (built-in dataset)",
            "",
            f"`{run.get('command')}`: rc {run.get('rc')}, "
            f"{run.get('seconds')} s{' (stopped at its limit)' if run.get('timed_out') else ''}",
            "",
        ]
        ep = [["epoch", "train loss", "val top-1 err", "val top-5 err", "images/s", "s"]]
        for e in run.get("epochs", []):
            ep.append(
                [
                    e.get("epoch"),
                    fmt(e.get("train_loss"), ".4f"),
                    fmt(e.get("val_top1_error"), ".4f"),
                    fmt(e.get("val_top5_error"), ".4f"),
                    fmt(e.get("images_per_sec"), ".0f"),
                    fmt(e.get("seconds"), ".1f"),
                ]
            )
        lines.append(md_table(ep))
        lines.append(f"\nFinal: {run.get('final')}")
    if train.get("split"):
        sp = [
            ["dropout", "ok", "device", "logits", "loss", "worst grad", "worst state after a step", "error"]
        ]
        for r in train["split"]["runs"]:
            e = (r.get("ranks") or [{}])[0]
            er = e.get("errors", {})
            sp.append(
                [
                    r["dropout"],
                    r.get("ok"),
                    e.get("device", "-"),
                    fmt(er.get("logits"), ".1e"),
                    fmt(er.get("loss"), ".1e"),
                    fmt(er.get("grads_worst"), ".1e"),
                    fmt(er.get("state_after_step_worst"), ".1e"),
                    (r.get("error") or "")[:200],
                ]
            )
        first = (train["split"]["runs"][0].get("ranks") or [{}])[0]
        lines += [
            "",
            "## Two towers, two gloo ranks on one GPU (relative errors against one device)",
            "",
            md_table(sp),
            "",
            f"Collectives: {first.get('gloo_cuda_collectives', 'CPU tensors')}",
        ]
    merged = {
        "files": sorted(data),
        "notes": notes,
        "targets": tg,
        "env": env,
        "ops": ops,
        **{k: v for k, v in data.items() if k not in ("p3_ops", "p6_compile")},
        "p3_ops_config": (data.get("p3_ops") or {}).get("config"),
        "p6_compile_config": (data.get("p6_compile") or {}).get("config"),
    }
    return "\n".join(lines) + "\n", merged


def brief(merged: dict) -> str:
    """A few lines for the end of a device call's output: the card, each target's count, the misses."""
    env = merged.get("env") or {}
    out = [
        f"GPU run: {env.get('device')} | driver {env.get('driver')} | torch {env.get('torch')} | triton "
        f"{env.get('triton')} | commit {env.get('git_commit')} | {env.get('datetime_utc')}"
    ]
    by: dict = {}
    for t in merged["targets"]:
        by.setdefault(t["target"], []).append(t)
    for target, items in by.items():
        n = {s: sum(t["status"] == s for t in items) for s in ("PASS", "MISS", "N/A")}
        line = f"- {target}: {n['PASS']} PASS, {n['MISS']} MISS, {n['N/A']} N/A"
        miss = [f"{t['item']} ({t['value']})" for t in items if t["status"] == "MISS"]
        if len(items) == 1:
            line += f" [{items[0]['value']}]"
        elif miss:
            line += "; MISS: " + "; ".join(miss)
        out.append(line[:700])
    for label, sec in (merged.get("p2_tests") or {}).items():
        for f in sec.get("failures", [])[:8]:
            msg = (f.get("message") or "").splitlines()
            out.append(f"  {label} FAILED {f['id']}: {msg[0][:160] if msg else ''}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="folders holding the returned p*.json files")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--stdout-only", action="store_true", help="print the markdown, write nothing")
    ap.add_argument("--brief", action="store_true", help="print a few lines per target, write nothing")
    args = ap.parse_args(argv)
    data, notes = load(args.dirs)
    if not data:
        print(f"gpu_summary: no p*.json files in {', '.join(map(str, args.dirs))}")
        return 1
    text, merged = render(data, notes)
    if args.brief:
        print(brief(merged))
        return 0
    if args.stdout_only:
        print(text)
        return 0
    env = data.get("p1_env") or {}
    slug = re.sub(r"[^a-z0-9]+", "-", str(env.get("device", "unknown")).lower()).strip("-")
    if env.get("device_type") != "cuda":
        slug = "cpu-rehearsal"
    stem = args.out / f"{slug}_{env.get('date', 'undated')}_gpu"
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(merged, indent=1, default=str) + "\n")
    stem.with_suffix(".md").write_text(text)
    written = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    if merged.get("ops"):
        from bench import fused_vs_eager as fve

        try:
            fve.plot(merged["ops"], stem.with_suffix(".png"))
            written.append(stem.with_suffix(".png"))
        except Exception as exc:  # noqa: BLE001
            print(f"chart not written: {exc!r}")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
