"""bench/tools/gpu_check.sh and its helpers, checked without a GPU: the Nsight Compute CSV parser on a
realistic sample, the join of ncu rows with the committed sass_cost prediction (the launches the GPU run will
make must line up with the predicted kernels), the summary's PASS / MISS table from synthetic part files, and
the rehearsal of part 1 through the shell script itself (file names, at most 8 files, the summary)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.tools import gpu_summary, ncu_kernels  # noqa: E402

PREDICTION = sorted((REPO / "bench" / "results").glob("sass_cost_3.6.0_*.json"))[-1]

# What `ncu --import r.ncu-rep --csv --page raw --print-units base` prints (layout of Nsight Compute 2025.x):
# a header of fixed columns and metric names, a units row, quoted values, thousands separators, "n/a".
# Launch 3 is another kernel that slipped through the name filter, launch 4 a second grid of a kernel.
SAMPLE_CSV = """==PROF== Connected to process 4242 (/usr/bin/python3.12)
==PROF== Disconnected from process 4242
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","dram__bytes_read.sum","dram__bytes_write.sum","gpu__time_duration.sum","launch__grid_size","launch__registers_per_thread","sm__maximum_warps_per_active_cycle_pct","sm__sass_thread_inst_executed.sum","sm__warps_active.avg.pct_of_peak_sustained_active","smsp__inst_executed.sum"
"","","","","","","","","","","","byte","byte","nsecond","","register/thread","%","inst","%","inst"
"0","4242","python3.12","127.0.0.1","_lrn_fwd_walk_kernel","1","7","(128, 1, 1)","(2304, 1, 1)","0","9.0","148,684,800","148,684,800","101,216","2304","40","100","710,123,456","87.52","24,017,892"
"1","4242","python3.12","127.0.0.1","_lrn_bwd_walk_kernel","1","7","(128, 1, 1)","(768, 1, 1)","0","9.0","297,369,600","148,684,800","150,333","768","72","50","n/a","45.1","24,400,000"
"2","4242","python3.12","127.0.0.1","_lrn_fwd_walk_kernel","1","7","(128, 1, 1)","(3072, 1, 1)","0","9.0","95,551,488","95,551,488","70,001","3072","40","100","500,000,000","90.0","16,000,000"
"3","4242","python3.12","127.0.0.1","vectorized_elementwise_kernel","1","7","(128, 1, 1)","(4, 1, 1)","0","9.0","1,024","0","2,000","4","16","100","1,000","10.0","40"
"4","4242","python3.12","127.0.0.1","_lrn_bwd_walk_kernel","1","7","(128, 1, 1)","(768, 1, 1)","0","9.0","191,102,976","95,551,488","110,000","768","64","50","800,000,000","50.0","25,000,000"
"""  # noqa: E501


def manifest(batch=128):
    launch = lambda op, chw, d, direction, fn, grid: {
        "op": op,
        "shape": [batch, *chw],
        "dtype": d,
        "layout": "nchw",
        "direction": direction,
        "index": 0,
        "name": f"{op}_{direction}",
        "function": fn,
        "grid": [grid],
        "programs": grid,
        "num_warps": 4,
    }
    return {
        "batch": batch,
        "launches": [
            launch("relu_lrn", (96, 55, 55), "float32", "fwd", "_lrn_fwd_walk_kernel", 2304),
            launch("relu_lrn", (96, 55, 55), "float32", "bwd", "_lrn_bwd_walk_kernel", 768),
            launch("relu_lrn", (256, 27, 27), "float32", "fwd", "_lrn_fwd_walk_kernel", 3072),
            launch("relu_lrn", (256, 27, 27), "float32", "bwd", "_lrn_bwd_walk_kernel", 768),
        ],
    }


def test_ncu_csv_parser_reads_a_realistic_raw_page():
    rows = ncu_kernels.parse_ncu_csv(SAMPLE_CSV)
    assert [r["id"] for r in rows] == [0, 1, 2, 3, 4]  # the units row and ==PROF== lines are skipped
    r0 = rows[0]
    assert r0["kernel"] == "_lrn_fwd_walk_kernel" and r0["programs"] == 2304
    assert r0["metrics"]["dram__bytes_read.sum"] == 148_684_800  # thousands separators
    assert r0["metrics"]["gpu__time_duration.sum"] == 101_216
    assert r0["metrics"]["sm__warps_active.avg.pct_of_peak_sustained_active"] == pytest.approx(87.52)
    assert rows[1]["metrics"]["sm__sass_thread_inst_executed.sum"] is None  # "n/a"
    assert ncu_kernels.parse_ncu_csv("==ERROR== no kernels were profiled\n") == []
    # the same table without the units row, with "name(args)" kernel names and app output before it
    lines = SAMPLE_CSV.splitlines()
    other = "\n".join(
        [
            "some application output",
            lines[2],
            *[
                line.replace('"_lrn_fwd_walk_kernel"', '"_lrn_fwd_walk_kernel(float*, int)"')
                for line in lines[4:]
            ],
        ]
    )
    again = ncu_kernels.parse_ncu_csv(other)
    assert [r["kernel"] for r in again] == [r["kernel"] for r in rows]


def test_join_matches_launch_order_and_the_committed_prediction():
    res = ncu_kernels.join(
        manifest(), ncu_kernels.parse_ncu_csv(SAMPLE_CSV), ncu_kernels.load_predictions(PREDICTION)
    )
    assert res["unmatched"] == [] and res["launches_expected"] == 4
    ids = [launch["ncu_id"] for launch in res["launches"]]
    assert ids == [0, 1, 2, 4]  # the stray torch kernel (id 3) is skipped, and named
    assert res["launches"][3]["skipped_rows"] == [3]
    first = res["launches"][0]
    pred = json.loads(PREDICTION.read_text())
    row = next(
        r
        for r in pred["rows"]
        if r["op"] == "relu_lrn"
        and r["shape"] == [128, 96, 55, 55]
        and r["dtype"] == "float32"
        and r["layout"] == "nchw"
        and r["direction"] == "fwd"
    )
    d = row["kernel_details"][0]
    assert first["predicted"]["warp_instructions"] == round(d["warp_instructions_per_program"] * 4 * 2304)
    assert first["predicted"]["thread_instructions"] == pytest.approx(
        row["total_thread_instructions"], rel=1e-6
    )
    assert first["measured_over_predicted"]["warp_instructions"] == pytest.approx(
        24_017_892 / first["predicted"]["warp_instructions"], rel=1e-3
    )
    case = next(c for c in res["cases"] if c["shape"] == [128, 96, 55, 55] and c["direction"] == "fwd")
    assert case["dram_over_minimal"] == pytest.approx(2 * 148_684_800 / row["minimal_bytes"], rel=1e-3)
    assert case["measured_warp_instructions_x32_per_byte"] == pytest.approx(
        24_017_892 * 32 / row["minimal_bytes"], rel=1e-3
    )
    assert case["minimal_gbs"] == pytest.approx(row["minimal_bytes"] / 101_216, rel=1e-3)
    bwd = next(c for c in res["cases"] if c["shape"] == [128, 96, 55, 55] and c["direction"] == "bwd")
    assert bwd["measured_thread_instructions_per_byte"] is None  # "n/a" never becomes a number
    # a launch missing from ncu's rows is listed, not matched to a later row of another grid
    res = ncu_kernels.join(manifest(), ncu_kernels.parse_ncu_csv(SAMPLE_CSV)[:1], {})
    assert len(res["unmatched"]) == 3


def test_the_gpu_run_launches_what_the_committed_prediction_compiled():
    """Recorded (nothing runs) at batch 128 with the current kernels: every launch's kernel, grid and warps
    is the prediction's, so part 4 joins one to one. Fails when the kernels changed: rerun sass_cost with
    triton 3.6 (bench/tools/README.md), or the GPU run predicts again by itself (slower)."""
    assert json.loads(PREDICTION.read_text())["meta"].get("kernels_sha256"), "stamp it: ncu_kernels.py stamp"
    assert ncu_kernels.committed_prediction("3.6.0") == PREDICTION, (
        "the kernels changed since the committed triton 3.6 prediction: regenerate it here "
        "(bench/tools/README.md, GPU session), or the GPU run spends about a minute predicting again")
    m = ncu_kernels.launch_main(None, 128, ["float32"], run=False)
    pred = ncu_kernels.load_predictions(PREDICTION)
    assert len(m["launches"]) == 20
    for e in m["launches"]:
        key = (e["op"], tuple(e["shape"]), e["dtype"], "nchw", e["direction"])
        d = pred[key]["kernel_details"][e["index"]]
        assert (d["function"], d["grid"], d["num_warps"]) == (e["function"], e["grid"], e["num_warps"]), e


# A stand-in for ncu: --query-metrics lists names; profiling runs the application (after the options) and
# writes a "report" naming its manifest; --import prints a raw-page CSV with a row per manifest launch whose
# kernel matches the --kernel-name regex, plus a torch kernel the filter would have dropped.
FAKE_NCU = r"""#!PYTHON
import json, re, subprocess, sys
a = sys.argv[1:]
if "--version" in a:
    print("NVIDIA (R) Nsight Compute Command Line Profiler\nVersion 2099.1.0 (fake)"); sys.exit(0)
if "--query-metrics" in a:
    print("Device GH100 (fake)\n" + "\n".join(n + "   some description   unit" for n in [
        "gpu__time_duration", "dram__bytes_read", "dram__bytes_write", "smsp__inst_executed",
        "sm__warps_active", "sm__maximum_warps_per_active_cycle_pct"])); sys.exit(0)
if "--import" in a:
    rep = json.load(open(a[a.index("--import") + 1]))
    m = json.load(open(rep["manifest"]))
    pat = re.compile(rep["regex"])
    cols = ["gpu__time_duration.sum", "dram__bytes_read.sum", "dram__bytes_write.sum",
            "smsp__inst_executed.sum", "launch__registers_per_thread", "launch__grid_size"]
    print('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size",'
          '"Grid Size","Device","CC",' + ",".join('"%s"' % c for c in cols))
    print(",".join('""' for _ in range(11 + len(cols))))
    i = 0
    for launch in m["launches"]:
        if not pat.match(launch["function"]):
            continue
        vals = ["1,000", "2,048", "1,024", "3,000", "40", str(launch["programs"])]
        print(",".join('"%s"' % v for v in [i, 1, "python3", "h", launch["function"], 1, 7, "(128, 1, 1)",
                                             "(%d, 1, 1)" % launch["programs"], 0, "9.0", *vals]))
        i += 1
        if i == 1:  # a kernel of torch's own, which the name filter would have dropped
            row = [i, 1, "python3", "h", "elementwise_kernel", 1, 7, "(128, 1, 1)", "(4, 1, 1)", 0, "9.0",
                   "5", "0", "0", "4", "16", "4"]
            print(",".join('"%s"' % v for v in row))
            i += 1
    sys.exit(0)
regex = a[a.index("--kernel-name") + 1].removeprefix("regex:")
out = a[a.index("-o") + 1]
app = a[a.index("-o") + 2:]
rc = subprocess.run(app).returncode
json.dump({"manifest": app[app.index("--manifest") + 1], "regex": regex}, open(out + ".ncu-rep", "w"))
print("==PROF== Disconnected"); sys.exit(rc)
"""


def test_ncu_run_end_to_end_with_a_stand_in_ncu(tmp_path):
    """run_main's commands, metric check, import options, parsing and join, with the launcher really run
    (CPU tensors, plain-PyTorch path) under a fake ncu."""
    fake = tmp_path / "ncu"
    fake.write_text(FAKE_NCU.replace("#!PYTHON", "#!" + sys.executable))
    fake.chmod(0o755)
    out, raw = tmp_path / "p4_ncu.json", tmp_path / "p4_ncu_raw.csv"
    res = ncu_kernels.run_main(out, raw, 120, tmp_path / "no_predictions", 2, ["float32"], ncu=str(fake),
                               ops=["relu_max_pool2d"])
    assert res["manifest_launches"] == 2 and res["rows_profiled"] == 3
    assert res["unmatched"] == [], res
    functions = [launch["function"] for launch in res["launches"]]
    assert functions == ["_pool_fwd_kernel", "_pool_bwd_block_kernel"]
    assert all(launch["measured"]["dram_bytes"] == 3072 for launch in res["launches"])
    assert "sm__sass_thread_inst_executed.sum" not in res["ncu_attempt_0"]["metrics"]  # not listed: dropped
    assert "launch__grid_size" in res["ncu_attempt_0"]["metrics"]  # launch metrics are always kept
    assert json.loads(out.read_text())["rows_profiled"] == 3 and raw.read_text().startswith('"ID"')


def synthetic_parts(tmp: Path) -> None:
    meta = {
        "device": "NVIDIA H100 80GB HBM3",
        "device_type": "cuda",
        "date": "2026-12-01",
        "torch": "2.11.0",
        "triton": "3.6.0",
        "cuda": "13.0",
        "python": "3.12.3",
        "git_commit": "abc",
        "datetime_utc": "x",
    }
    (tmp / "p1_env.json").write_text(json.dumps({**meta, "driver": "580.159.04"}))
    (tmp / "p2_tests.json").write_text(
        json.dumps(
            {
                "cuda_marked": {"counts": {"passed": 120}, "failures": [], "finished": True, "seconds": 80},
                "equivalence_ops_on_gpu": {
                    "counts": {"passed": 50, "failed": 2},
                    "finished": False,
                    "seconds": 40,
                    "failures": [
                        {"id": "t1", "message": "AssertionError: 3 of 8 differ"},
                        {
                            "id": "t2",
                            "message": "Expected all tensors to be on the same device",
                            "harness": True,
                        },
                    ],
                },
            }
        )
    )
    t = lambda prov, d, ms, b=297369600: {
        "case": "relu_lrn 96x55x55",
        "op": "relu_lrn",
        "shape": [128, 96, 55, 55],
        "dtype": "float32",
        "direction": d,
        "provider": prov,
        "ms": [ms, ms, ms],
        "bytes": b,
        "gbs": b / (ms * 1e-3) / 1e9,
    }
    ops = {
        "meta": meta,
        "config": {"batch": 128, "cpu_batch": 8},
        "copy_bandwidth": {"gbs": 3000.0},
        "times": [
            t("eager", "fwd", 1.0),
            t("fused", "fwd", 0.11),
            t("eager", "fwd+bwd", 2.0, 7e8),
            t("fused", "fwd+bwd", 0.4, 7e8),
        ],
        "checks": {},
        "memory": [],
        "skipped_for_time": [],
    }
    (tmp / "p3_ops.json").write_text(json.dumps(ops))
    comp = {**ops, "times": [t("compile", "fwd+bwd", 0.5, 7e8), t("fused", "fwd+bwd", 0.45, 7e8)]}
    (tmp / "p6_compile.json").write_text(json.dumps(comp))
    res = ncu_kernels.join(
        manifest(), ncu_kernels.parse_ncu_csv(SAMPLE_CSV), ncu_kernels.load_predictions(PREDICTION)
    )
    (tmp / "p4_ncu.json").write_text(json.dumps({**res, "predictions": "committed", "notes": []}))
    step = lambda prov, ips: {
        "provider": prov,
        "dtype": "float32",
        "precision": "float32",
        "batch": 128,
        "ms": [1, 1, 1],
        "images_per_s": ips,
    }
    (tmp / "p5_model.json").write_text(
        json.dumps(
            {
                "config": {"network": "paper"},
                "train_step": [step("eager", 1000), step("fused", 1300), step("compile", 1200)],
                "model_memory": {
                    "saved_per_image": {
                        "eager": {"bytes_per_image": 12.5e6, "method": "m", "batch": 128},
                        "fused": {"bytes_per_image": 3.69e6, "method": "m", "batch": 128},
                    }
                },
            }
        )
    )
    (tmp / "p7_train.json").write_text(
        json.dumps(
            {
                "train_run": {
                    "rc": 0,
                    "seconds": 60,
                    "final": {"val_top1_error": 0.2},
                    "epochs": [],
                    "command": "c",
                },
                "split": {
                    "ok": True,
                    "runs": [{"dropout": 0.0, "ok": True, "ranks": [{"errors": {"logits": 1e-7}}]}],
                },
            }
        )
    )


def test_summary_marks_every_target(tmp_path):
    synthetic_parts(tmp_path)
    data, notes = gpu_summary.load([tmp_path])
    text, merged = gpu_summary.render(data, notes)
    status = {(t["target"], t["item"]): t["status"] for t in merged["targets"]}
    assert status[("every CUDA test passes on the card (issue 9)", "pytest -m cuda")] == "PASS"
    assert status[("every CUDA test passes on the card (issue 9)", "equivalence, ops on GPU")] == "MISS"
    bw = "fused fwd and bwd >= 80% of copy bandwidth"
    assert status[(bw, "relu_lrn 96x55x55 float32 fwd")] == "PASS"  # 2.7 TB/s of 3.0
    lrn = next(t for t in merged["targets"] if t["target"].startswith("ReLU+LRN fwd+bwd"))
    assert lrn["status"] == "MISS" and "1.11x compile" in lrn["value"]  # part 6's own fused time: 0.5/0.45
    step = next(t for t in merged["targets"] if t["target"].startswith("training step"))
    assert step["status"] == "PASS"  # 1.3x eager, faster than compiled eager
    mem = next(t for t in merged["targets"] if t["target"].startswith("activation memory"))
    assert mem["status"] == "MISS"
    trusted = [t for t in merged["targets"] if t["target"].startswith("static cost report trusted")]
    assert len(trusted) == 4 and all(t["status"] in ("PASS", "MISS") for t in trusted)
    assert any(t["target"].startswith("two-tower") and t["status"] == "PASS" for t in merged["targets"])
    for heading in (
        "## Targets",
        "## Op timings",
        "## Nsight Compute",
        "## AlexNet training step",
        "## Tests on the GPU",
        "[harness]",
        "NVIDIA H100 80GB HBM3",
    ):
        assert heading in text, heading
    short = gpu_summary.brief(merged)
    assert "- every CUDA test passes on the card (issue 9): 1 PASS, 1 MISS, 0 N/A" in short
    assert "equivalence_ops_on_gpu FAILED t1" in short
    out = tmp_path / "results"
    assert gpu_summary.main([str(tmp_path), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        f"nvidia-h100-80gb-hbm3_2026-12-01_gpu.{e}" for e in ("json", "md", "png")
    ]


def test_rehearsal_of_part_1_through_the_script(tmp_path):
    env = {**os.environ, "REHEARSE": "1", "PART": "1", "OUT": str(tmp_path), "LIMIT_S": "60"}
    p = subprocess.run(
        ["bash", str(REPO / "bench" / "tools" / "gpu_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    files = sorted(f.name for f in tmp_path.iterdir())
    assert files == ["gpu_check_1.log", "p1_env.json"]  # part 1 alone; never more than 8 files
    info = json.loads((tmp_path / "p1_env.json").read_text())
    assert info["torch"] and "sources_sha256" in info and "kernels_sha256" in info
    assert "== summary" in p.stdout and "GPU run: CPU" in p.stdout
    assert "part 1 rc=0" in (tmp_path / "gpu_check_1.log").read_text()
