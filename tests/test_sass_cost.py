"""bench/tools/sass_cost.py's reading of SASS: loops, their weighting by trip counts, memory widths,
occupancy.

Synthetic SASS and TTIR only (compiling real kernels is tests/test_compile_sm.py's job, in a process
without the interpreter)."""

import importlib.util
import os
import sys

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
