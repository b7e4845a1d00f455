#!/usr/bin/env bash
# One command for a GPU session, from the repository root:
#     bash bench/gpu_check.sh [extra flags for bench/fused_vs_eager.py, e.g. --quick]
#     SKIP_TESTS=1 bash bench/gpu_check.sh      # the benchmark alone
# 1. the CUDA tests (pytest -m cuda), 2. the full benchmark, 3. results copied to $OUT when it is set.
# Runs both steps even when the tests fail, and exits non-zero if either failed.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${TRITON_INTERPRET:-}" ]; then
    echo "gpu_check: unsetting TRITON_INTERPRET (timings under the interpreter are meaningless)"
    unset TRITON_INTERPRET
fi
PY=${PYTHON:-python3}
RESULTS=bench/results
LOG_DIR=${OUT:-$RESULTS}
mkdir -p "$LOG_DIR"

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', \
triton.__version__, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"

tests_rc=0
if [ -z "${SKIP_TESTS:-}" ]; then  # SKIP_TESTS=1: benchmark only (e.g. tests already run in another call)
    echo "== CUDA tests"
    "$PY" -m pytest -q -m cuda tests 2>&1 | tee "$LOG_DIR/gpu_tests.log"
    tests_rc=${PIPESTATUS[0]}
    if [ "$tests_rc" -eq 5 ]; then echo "gpu_check: no CUDA tests collected"; tests_rc=0; fi
fi

echo "== benchmark"
start=$(date +%s)
"$PY" bench/fused_vs_eager.py --out "$RESULTS" "$@" 2>&1 | tee "$LOG_DIR/gpu_bench.log"
bench_rc=${PIPESTATUS[0]}
echo "benchmark took $(( $(date +%s) - start )) s"

if [ -n "${OUT:-}" ]; then
    # Only the files this run wrote to bench/results; CPU results and older runs stay behind.
    find "$RESULTS" -maxdepth 1 -type f -newermt "@$start" \( -name '*.json' -o -name '*.md' -o -name '*.png' \) \
        -exec cp {} "$OUT"/ \;
    ls -l "$OUT"
fi
echo "gpu_check: tests rc=$tests_rc, benchmark rc=$bench_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
