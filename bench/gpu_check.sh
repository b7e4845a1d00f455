#!/usr/bin/env bash
# One command for a GPU session, from the repository root:
#     bash bench/gpu_check.sh [extra flags for bench/fused_vs_eager.py, e.g. --quick]
#     SKIP_TESTS=1 bash bench/gpu_check.sh      # the benchmark alone
# 1. the CUDA tests (pytest -m cuda), 2. the full benchmark. With $OUT set, results and logs are written
# straight into $OUT (so a run cut short still leaves its partial results there), else into bench/results.
# LIMIT_S (default 600, the device call's limit; 0 = none): the benchmark gets what is left of it after the
# tests, minus a margin, as --max-seconds, and lists what it had to skip.
# Runs both steps even when the tests fail, and exits non-zero if either failed.
set -u
cd "$(dirname "$0")/.."
script_start=$(date +%s)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${TRITON_INTERPRET:-}" ]; then
    echo "gpu_check: unsetting TRITON_INTERPRET (timings under the interpreter are meaningless)"
    unset TRITON_INTERPRET
fi
PY=${PYTHON:-python3}
RESULTS=${OUT:-bench/results}
LIMIT_S=${LIMIT_S:-600}
MARGIN_S=${MARGIN_S:-150}  # the last op case or model compile started before the budget, and the writing
mkdir -p "$RESULTS"

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', \
triton.__version__, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"

tests_rc=0
if [ -z "${SKIP_TESTS:-}" ]; then
    echo "== CUDA tests"
    "$PY" -m pytest -q -m cuda tests 2>&1 | tee "$RESULTS/gpu_tests.log"
    tests_rc=${PIPESTATUS[0]}
    if [ "$tests_rc" -eq 5 ]; then echo "gpu_check: no CUDA tests collected"; tests_rc=0; fi
fi

budget=()
if [ "$LIMIT_S" -gt 0 ]; then
    left=$(( LIMIT_S - ($(date +%s) - script_start) - MARGIN_S ))
    [ "$left" -lt 60 ] && left=60
    budget=(--max-seconds "$left")
fi
echo "== benchmark ${budget[*]}"
start=$(date +%s)
"$PY" bench/fused_vs_eager.py --out "$RESULTS" "${budget[@]}" "$@" 2>&1 | tee "$RESULTS/gpu_bench.log"
bench_rc=${PIPESTATUS[0]}
echo "benchmark took $(( $(date +%s) - start )) s; results in $RESULTS"
ls -l "$RESULTS"
echo "gpu_check: tests rc=$tests_rc, benchmark rc=$bench_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
