"""bench/tools/sass_cost.py's reading of SASS: loops, their weighting by trip counts, memory widths,
occupancy.

Synthetic SASS and TTIR, and one real kernel (relu_lrn's forward, compiled in a process without the
interpreter) for the report's other limits: special-function instructions, waves, loop code size.
Compiling every launch is tests/test_compile_sm.py's job."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sc():
    spec = importlib.util.spec_from_file_location("sass_cost_under_test",
                                                  os.path.join(ROOT, "bench", "tools", "sass_cost.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _sass(*lines) -> str:
    """cuobjdump -sass style lines from (address, instruction) pairs."""
    out = ["\tcode for sm_90a", "\t\tFunction : k"]
    for addr, ins in lines:
        out.append(f"        /*{addr:04x}*/                   {ins} ;   /* 0x0000000000000000 */")
        out.append("                                                       /* 0x000fe20000000800 */")
    return "\n".join(out)


NESTED = _sass(
    (0x00, "LDC R1, c[0x0][0x28]"),
    (0x10, "S2R R0, SR_TID.X"),
    (0x20, "LDG.E.128 R4, desc[UR4][R2.64]"),  # outer loop: 0x20 .. 0x80
    (0x30, "IADD3 R6, R6, 0x1, RZ"),  # inner loop: 0x30 .. 0x50
    (0x40, "@P0 LDG.E.U16 R7, desc[UR4][R8.64]"),
    (0x50, "@P0 BRA 0x30"),
    (0x60, "STG.E.64 desc[UR4][R2.64], R4"),
    (0x70, "ISETP.NE.AND P1, PT, R6, RZ, PT"),
    (0x80, "@P1 BRA 0x20"),
    (0x90, "EXIT"),
    (0xa0, "BRA 0xa0"),
    (0xb0, "NOP"),
    (0xc0, "NOP"),
)


def test_parse_drops_padding_and_final_self_branch(sc):
    instrs = sc.parse_sass(NESTED)
    assert [i.addr for i in instrs] == list(range(0, 0xa0, 0x10))
    assert instrs[4].pred == "@P0" and instrs[4].opcode == "LDG.E.U16"
    loops = sc.find_loops(instrs)
    assert [(lp.start, lp.end) for lp in loops] == [(0x20, 0x80), (0x30, 0x50)]


def test_nested_loops_multiply(sc):
    r = sc.analyse_sass(NESTED, (3, 4), num_warps=2)
    # 2 before the loops, 1 + 3 per outer trip, 3 per inner trip, EXIT once
    assert r["warp_instructions_per_program"] == 2 + 3 * (1 + 3) + 3 * 4 * 3 + 1
    assert r["thread_instructions_per_program"] == r["warp_instructions_per_program"] * 64
    assert r["loads_per_program"] == {"LDG.E.128": 3 * 64, "LDG.E.U16": 12 * 64}
    assert r["stores_per_program"] == {"STG.E.64": 3 * 64}
    assert r["load_bytes_per_program"] == 3 * 64 * 16 + 12 * 64 * 2
    assert r["loops_matched"] and not r["notes"]


def test_too_few_declared_trips_are_flagged(sc):
    r = sc.analyse_sass(NESTED, (3,), num_warps=1)
    assert not r["loops_matched"]
    assert r["notes"]


TTIR = """
    %c0_i32 = arith.constant 0 : i32 loc(#loc1)
    %c1_i32 = arith.constant 1 : i32 loc(#loc1)
    %c2_i32 = arith.constant 2 : i32 loc(#loc1)
    %a:2 = scf.for %i = %c0_i32 to %n step %c1_i32 iter_args(%x = %cst) -> (tensor<8xf32>)  : i32 {
      %b = scf.for %j = %c0_i32 to %c2_i32 step %c1_i32 iter_args(%y = %x) -> (tensor<8xf32>)  : i32 {
        scf.yield %y : tensor<8xf32> loc(#loc2)
      } loc(#loc3)
      scf.yield %b : tensor<8xf32> loc(#loc4)
    } loc(#loc5)
"""


def test_constant_loops_come_from_the_ttir(sc):
    loops = sc.source_loops(TTIR)
    assert [(lp.depth, lp.const) for lp in loops] == [(0, None), (1, 2.0)]
    r = sc.analyse_sass(NESTED, (3,), num_warps=1, ttir=TTIR)  # only the runtime loop is declared
    assert r["loops_matched"], r["notes"]
    assert [lp["trips"] for lp in r["loops"]] == [3.0, 2.0]
    assert r["warp_instructions_per_program"] == 2 + 3 * 4 + 3 * 2 * 3 + 1


UNROLLED = _sass(
    (0x00, "LDC R1, c[0x0][0x28]"),
    (0x10, "LDG.E R2, desc[UR4][R2.64]"),  # main loop, unrolled x4: 0x10 .. 0x50
    (0x20, "LDG.E R3, desc[UR4][R4.64]"),
    (0x30, "LDG.E R5, desc[UR4][R6.64]"),
    (0x40, "LDG.E R7, desc[UR4][R8.64]"),
    (0x50, "@P0 BRA 0x10"),
    (0x60, "LDG.E R2, desc[UR4][R2.64]"),  # remainder loop: 0x60 .. 0x70
    (0x70, "@P1 BRA 0x60"),
    (0x80, "EXIT"),
    (0x90, "BRA 0x90"),
)


def test_unrolled_loop_and_remainder_read_as_one(sc):
    r = sc.analyse_sass(UNROLLED, (7,), num_warps=1)
    assert not r["loops_matched"]  # a best effort, said so
    assert [lp["trips"] for lp in r["loops"]] == [1.0, 3.0]
    assert r["loads_per_program"] == {"LDG.E": (4 * 1 + 3) * 32}
    assert any("unrolled x4" in n for n in r["notes"])


def test_unfused_square_adds(sc):
    chain = _sass((0x00, "FMUL R3, R2, R2"), (0x10, "FFMA R3, R4.reuse, R4.reuse, R3"),
                  (0x20, "FADD R6, R3, R7"), (0x30, "EXIT"))  # a sum of squares, then a plain add
    assert sc.unfused_square_adds(chain) == []
    unfused = _sass((0x00, "FMUL R3, R2.reuse, R2.reuse"), (0x10, "FMUL R5, R4, R4"),
                    (0x20, "FADD R6, R3, -R5"), (0x30, "EXIT"))
    found = sc.unfused_square_adds(unfused)
    assert len(found) == 2 and found[0].startswith("0x0020 FADD") and "0x0000 FMUL" in found[0]
    overwritten = _sass((0x00, "FMUL R4, R2, R2"), (0x10, "LDG.E.64 R4, desc[UR4][R8.64]"),
                        (0x20, "FMUL R9, R2, R3"), (0x30, "FADD R6, R4, R9"), (0x40, "EXIT"))
    assert sc.unfused_square_adds(overwritten) == []  # R4 reloaded; R9 is a product, not a square
    pair = _sass((0x00, "FMUL R21, R23, R23"), (0x10, "FADD2 R20, R66.F32x2.HI_LO, R98.F32x2.HI_LO"),
                 (0x20, "FADD R58, R21, R42"), (0x30, "EXIT"))
    assert sc.unfused_square_adds(pair) == []  # sm_100's FADD2 wrote R20 and R21
    carried = _sass((0x00, "FMUL R47, R47, R47"), (0x10, "FADD R23, R26, R47"),  # loop 0x10 .. 0x30
                    (0x20, "FADD R47, R23, R8"), (0x30, "@P0 BRA 0x10"), (0x40, "EXIT"))
    assert sc.unfused_square_adds(carried) == []  # from the second trip on, R47 is the loop's own sum
    in_loop = _sass((0x00, "MOV R3, RZ"), (0x10, "FMUL R5, R4, R4"), (0x20, "FADD R3, R3, R5"),
                    (0x30, "@P0 BRA 0x10"), (0x40, "EXIT"))
    assert len(sc.unfused_square_adds(in_loop)) == 1


def test_occupancy(sc):
    assert sc.occupancy_warps(32, 4, 0) == 64
    assert sc.occupancy_warps(128, 4, 0) == 16
    assert sc.occupancy_warps(255, 8, 0) == 8
    assert sc.occupancy_warps(32, 4, 100_000) == 8  # two blocks of shared memory fit


def test_minimal_bytes_follow_the_bench_model(sc):
    assert sc.minimal_bytes("relu_lrn", "fwd", 10, 10, 4) == 80
    assert sc.minimal_bytes("relu_lrn", "bwd", 10, 10, 2) == 60
    assert sc.minimal_bytes("max_pool2d", "fwd", 36, 4, 4) == 36 * 4 + 4 * 4 + 4
    assert sc.minimal_bytes("relu_lrn_max_pool2d", "bwd", 36, 4, 2) == 2 * 36 * 2 + 4 * 2 + 4
    assert sc.minimal_bytes("relu_dropout", "bwd", 8, 8, 4) == 96


# ------------------------------------------------------------------- the other limits (issue 19, item 8)

SPECIAL = _sass(
    (0x00, "LDC R1, c[0x0][0x28]"),
    (0x10, "MUFU.RCP R2, R3"),  # once
    (0x20, "MUFU.EX2 R4, R5"),  # outer loop: 0x20 .. 0x60
    (0x30, "@P0 MUFU.RSQ R6, R7"),  # inner loop: 0x30 .. 0x40
    (0x40, "@P0 BRA 0x30"),
    (0x50, "ISETP.NE.AND P1, PT, R6, RZ, PT"),
    (0x60, "@P1 BRA 0x20"),
    (0x70, "EXIT"),
    (0x80, "BRA 0x80"),
)


def test_mufu_weighted_by_trips_and_loop_bytes(sc):
    r = sc.analyse_sass(SPECIAL, (3, 4), num_warps=2)
    assert r["loops_matched"], r["notes"]
    assert r["mufu_per_program"] == {"MUFU.EX2": 3 * 64, "MUFU.RCP": 64, "MUFU.RSQ": 3 * 4 * 64}
    # 16 bytes an instruction, from the loop's first instruction to its closing branch
    assert [(lp["instructions"], lp["bytes"]) for lp in r["loops"]] == [(5, 0x50), (2, 0x20)]
    assert sc.analyse_sass(NESTED, (3, 4), num_warps=2)["mufu_per_program"] == {}


# A loop with its zero-trip guard, then an if whose complement ends the program (ptxas's layout of
# block.py's `if last:` epilogue): a conditional EXIT, the if's code up to the final EXIT.
GUARDED = _sass(
    (0x00, "S2R R0, SR_TID.X"),
    (0x10, "@!P0 BRA 0x50"),  # the loop's guard: not an if
    (0x20, "LDG.E R4, desc[UR4][R2.64]"),  # loop: 0x20 .. 0x40
    (0x30, "IADD3 R6, R6, 0x1, RZ"),
    (0x40, "@P1 BRA 0x20"),
    (0x50, "@!P2 EXIT"),  # the if: 0x60 .. 0xa0
    (0x60, "STG.E desc[UR4][R2.64], R4"),
    (0x70, "@!P3 EXIT"),  # inside the if: not another one
    (0x80, "STG.E desc[UR4][R2.64], R5"),
    (0x90, "FADD R4, R4, R5"),
    (0xa0, "EXIT"),
    (0xb0, "BRA 0xb0"),
)
GUARDED_TTIR = """
    %r = scf.for %g = %c0 to %n step %c1 iter_args(%a = %x) -> (f32) : i32 {
    }
    scf.if %last {
      scf.if %inner {
      }
    }
"""


def test_ifs_weighted_by_the_fraction_of_programs_that_enter(sc):
    instrs = sc.parse_sass(GUARDED)
    assert sc.if_regions(instrs, sc.find_loops(instrs)) == [(0x60, 0xa0)]
    assert sc.source_ifs(GUARDED_TTIR) == 1
    r = sc.analyse_sass(GUARDED, (4,), num_warps=1, ttir=GUARDED_TTIR, ifs=(0.25,))
    # 3 before and after the loop, 3 a trip, the if's 5 instructions in a quarter of the programs
    assert r["warp_instructions_per_program"] == 3 + 4 * 3 + 0.25 * 5
    assert r["stores_per_program"] == {"STG.E": 0.25 * 2 * 32}
    assert r["loops_matched"] and r["if_regions"] == [dict(start="0x60", end="0xa0", fraction=0.25)]
    # ifs the SASS does not show as declared: counted for every program, and flagged
    r = sc.analyse_sass(GUARDED, (4,), num_warps=1, ttir=GUARDED_TTIR, ifs=(0.25, 0.5))
    assert r["warp_instructions_per_program"] == 3 + 4 * 3 + 5 and not r["loops_matched"]


def test_trips_come_from_the_launch_arguments(sc):
    # relu_lrn's channel walks at conv2's 256 channels: groups of SIZE = 5 steps per chunk of CHUNK output
    # channels, the first (forward) or two (backward) warming the rings up outside the loops; counted here
    # from the chunks' lengths, against the report's reading of the kernel's loop bounds
    import torch

    import kernels
    from kernels._common import recording
    launches = []
    x = torch.empty(2, 256, 6, 6).requires_grad_()
    with recording(launches.append):
        y = kernels.relu_lrn(x)
        torch.autograd.grad(y, x, torch.empty_like(y))
    assert [launch.fn.fn.__name__ for launch in launches] == ["_lrn_fwd_walk_kernel", "_lrn_bwd_walk_kernel"]
    for launch, halo, warm in zip(launches, (4, 8), (1, 2)):
        chunk = launch.constexprs["CHUNK"]
        groups = [-(-(min(chunk, 256 - c0) + halo) // 5) for c0 in range(0, 256, chunk)]
        trips = sc.kernel_trips(launch)
        assert len(trips.loops) == 2 and trips.ifs == ()
        assert sum(trips.loops) + warm == pytest.approx(sum(groups) / len(groups)), (launch.name, trips)


def test_waves_and_binding_limit(sc):
    assert sc.SM_COUNT == 132 and sc.ISSUE_LANES // sc.MUFU_LANES == 8
    # the issue's example: the fused block forward, 588 programs of 4 warps at 12 resident warps per SM
    per_sm, w = sc.waves(588, 12, 4)
    assert per_sm == 3 and w == pytest.approx(588 / 396) and f"{w:.2f}" == "1.48"
    assert sc.waves(10, 0, 4) == (0, float("inf"))  # nothing fits
    equiv, bound = sc.binding_limit(5.67, 0.63)
    assert equiv == pytest.approx(5.04) and bound == "issue"
    assert sc.binding_limit(2.0, 0.3) == (pytest.approx(2.4), "MUFU")


def _kernel():
    """A stand-in kernel for launches built by hand (its trips registered with monkeypatch)."""


def test_row_and_table_carry_the_other_limits(sc, monkeypatch):
    import torch

    from kernels._common import Launch
    monkeypatch.setitem(sc.TRIPS, f"{__name__}._kernel", lambda args, grid: sc.Trips((3, 4)))
    launch = Launch("relu_lrn_fwd", _kernel, (1000,), (), {}, 4, torch.device("cpu"))
    # 128 registers x 128 threads: 4 programs of 4 warps fit the 64k registers of an SM
    compiled = dict(name="relu_lrn_fwd", function="k", num_warps=4, num_stages=1, constexprs={},
                    signature={}, aligned=[], trips=[3, 4], registers=128, spill_bytes=0, stack=0, local=0,
                    shared=0, occupancy_warps=sc.occupancy_warps(128, 4, 0), sass=SPECIAL, ttir=None)
    nx = 64_000
    case = dict(op="relu_lrn", shape=[1, 1, 1, nx], direction="fwd", dtype="float32", layout="nchw",
                nx=nx, ny=nx, am=1)
    row = sc._row(case, [launch], [compiled])
    mb = sc.minimal_bytes("relu_lrn", "fwd", nx, nx, 4)
    mufu = (1 + 3 + 12) * 128 * 1000
    assert row["mufu_per_byte"] == round(mufu / mb, 3)
    assert row["mufu_issue_equivalent_per_byte"] == round(8 * mufu / mb, 2)
    per_byte = (2 + 3 * (3 + 4 * 2) + 1) * 128 * 1000 / mb  # the SASS's 8 instructions, weighted
    assert row["instructions_per_byte"] == round(per_byte, 2)
    assert row["binding_limit"] == "MUFU" and 8 * mufu / mb > per_byte  # 32 against 9 per byte
    assert row["programs"] == [1000] and row["programs_per_sm"] == [4]
    assert row["waves"] == [round(1000 / (4 * 132), 4)]
    assert row["largest_loop_bytes"] == 0x50 and not row["loop_over_icache_flag"]
    line = sc.table([row])[2]
    assert f"| {row['mufu_per_byte']:.2f} ({row['mufu_issue_equivalent_per_byte']:.1f}) | " in line
    assert "| 16 | 1.89 (4/SM) | 0.1 |" in line
    assert len(line.split("|")) == len(sc.table([row])[0].split("|"))


# Runs in a fresh process without TRITON_INTERPRET (compiling needs real @triton.jit functions): one real
# row, relu_lrn's forward in float32 at conv1's shape, one kernel (a second or two of ptxas with Triton's
# cache cold; tests/test_compile_sm.py, earlier in the suite, compiles the same launch).
_REAL_ROW = textwrap.dedent(r"""
    import json, math
    import bench.tools.sass_cost as sc

    spec = sc.OPS["relu_lrn"]
    shape = (sc.BATCH, *spec.shapes[0])
    fwd, _, nx, ny = sc.capture(spec.call, shape, sc.DTYPES["float32"], "nchw", backward=False)
    (compiled,), = sc.compile_all(fwd, (90,), processes=1, sass=True)
    case = dict(op="relu_lrn", shape=list(shape), direction="fwd", dtype="float32", layout="nchw",
                nx=nx, ny=ny, am=1)
    row = sc._row(case, fwd, [compiled])
    print(json.dumps(dict(row=row, sass=compiled["sass"], table=sc.table([row]),
                          programs=math.prod(fwd[0].grid), threads=32 * fwd[0].num_warps), default=str))
""")


@pytest.fixture(scope="module")
def real_row():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _REAL_ROW], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_real_row_mufu_recounted_from_the_sass(sc, real_row):
    row, d = real_row["row"], real_row["row"]["kernel_details"][0]
    assert "error" not in row and row["loops_matched"], row.get("note")
    # an independent recount: every MUFU line of the disassembly, weighted by the trips of the loops
    # (address ranges) it lies in; the LRN's s^-beta needs the special-function pipe
    mufu = 0.0
    for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?MUFU\.", real_row["sass"]):
        addr, w = int(m.group(1), 16), 1.0
        for lp in d["loops"]:
            if int(lp["start"], 16) <= addr <= int(lp["end"], 16):
                w *= lp["trips"]
        mufu += w
    assert mufu > 0
    per_byte = mufu * real_row["threads"] * real_row["programs"] / row["minimal_bytes"]
    assert row["mufu_per_byte"] == pytest.approx(per_byte, abs=1e-3)
    assert row["mufu_issue_equivalent_per_byte"] == pytest.approx(8 * per_byte, abs=0.01)
    bound = "MUFU" if 8 * per_byte > row["instructions_per_byte"] else "issue"
    assert row["binding_limit"] == bound


def test_real_row_waves_and_loop_code(sc, real_row):
    row, d = real_row["row"], real_row["row"]["kernel_details"][0]
    per_sm = d["occupancy_warps"] // d["num_warps"]
    assert d["occupancy_warps"] == sc.occupancy_warps(d["registers"], d["num_warps"], d["shared"])
    assert row["programs"] == [real_row["programs"]] and row["programs_per_sm"] == [per_sm] and per_sm >= 1
    assert row["waves"][0] == pytest.approx(real_row["programs"] / (per_sm * 132), abs=1e-4)
    addrs = [int(a, 16) for a in re.findall(r"^\s*/\*([0-9a-f]{4,})\*/", real_row["sass"], re.M)]
    assert d["loops"]
    for lp in d["loops"]:  # 16 bytes an instruction, with no gap inside a loop
        start, end = int(lp["start"], 16), int(lp["end"], 16)
        assert lp["bytes"] == end - start + 16 == 16 * sum(1 for a in addrs if start <= a <= end)
    assert row["largest_loop_bytes"] == max(lp["bytes"] for lp in d["loops"])
    assert row["loop_over_icache_flag"] == (row["largest_loop_bytes"] > 32 * 1024)
    assert f"| {row['waves'][0]:.2f} ({per_sm}/SM) |" in real_row["table"][2]
