#!/usr/bin/env bash
# Issue 9's GPU run, in two device calls (from the repository root; bench/tools/README.md "GPU session"):
#     PART=1-5 LIMIT_S=420 bash bench/tools/gpu_check.sh    # env, CUDA tests, op benchmark, Nsight Compute, AlexNet step
#     PART=6-7 LIMIT_S=300 bash bench/tools/gpu_check.sh    # torch.compile per op, train.run, two towers on one GPU
#     bash bench/tools/gpu_check.sh --prepare               # here, before the calls: the commit, for a machine without git
#     REHEARSE=1 bash bench/tools/gpu_check.sh              # here, on the CPU: every part's code path at tiny sizes
# Parts run in the issue's order of value, each in its own process under a time cap, and each writes its
# JSON into $OUT as it goes, so a command stopped at its limit still returns every finished part:
#     gpu_check_<PART>.log (everything printed), p1_env.json, p2_tests.json, p3_ops.json, p4_ncu.json,
#     p4_ncu_raw.csv, p5_model.json | p6_compile.json, p7_train.json   (at most 7 files a call)
# Part 2 runs the CUDA tests in both builds of the kernels: 2a as they run (inline PTX), 2c with
# ALEXNET_NO_ASM=1 (label cuda_marked_no_asm, test ids carrying [no_asm]), 2b the equivalence tests.
# Part 1 (the environment, a few seconds) runs in every call. PART takes ranges and lists ("1-5", "6-7",
# "2,4", "all"). LIMIT_S: the seconds the call may take (the device call's timeout_s less ~60); each part
# gets at most its cap (P2_S, P3_S, P4_S, P6_S, P7_S) and never more than what is left; part 5 and part 6
# take what the others leave. Afterwards, here: python bench/tools/gpu_summary.py <folder of the returned files>.
set -u
cd "$(dirname "$0")/../.."
if [ "${1:-}" = "--prepare" ]; then exec python3 bench/tools/gpu_parts.py prepare; fi
script_start=$(date +%s)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # timings and ncu need compiled kernels (the tests' conftest sets it without CUDA)
PY=${PYTHON:-python3}
REHEARSE=${REHEARSE:-}
PART=${PART:-$([ -n "$REHEARSE" ] && echo all || echo 1-5)}
OUT=${OUT:-$([ -n "$REHEARSE" ] && echo /tmp/gpu_check_rehearsal || echo bench/results/gpu_check_local)}
mkdir -p "$OUT"

parts=" 1 "
for item in ${PART//,/ }; do
    case "$item" in
        all) parts=" 1 2 3 4 5 6 7 " ;;
        *-*) for ((p = ${item%-*}; p <= ${item#*-}; p++)); do parts+="$p "; done ;;
        *) parts+="$item " ;;
    esac
done
want() { [[ "$parts" == *" $1 "* ]]; }
tag=$(echo "$PART" | tr -c 'A-Za-z0-9._\n-' '_')
LOG="$OUT/gpu_check_${tag}.log"

main() {

if [ -n "$REHEARSE" ]; then  # tiny sizes, short caps: the code paths, not the numbers
    LIMIT_S=${LIMIT_S:-900}; P2_S=${P2_S:-150}; P3_S=${P3_S:-90}; P4_S=${P4_S:-90}; P6_S=${P6_S:-90}
    P7_S=${P7_S:-150}; MARGIN_S=${MARGIN_S:-5}
else
    if want 6 || want 7; then LIMIT_S=${LIMIT_S:-300}; else LIMIT_S=${LIMIT_S:-420}; fi
    P2_S=${P2_S:-150}; P3_S=${P3_S:-80}; P4_S=${P4_S:-75}; P6_S=${P6_S:-150}; P7_S=${P7_S:-130}
    MARGIN_S=${MARGIN_S:-10}
fi
elapsed() { echo $(( $(date +%s) - script_start )); }
left() { echo $(( LIMIT_S - $(elapsed) - MARGIN_S )); }
cap() {  # cap SECONDS [RESERVE]: min(SECONDS, what is left less RESERVE for the parts after), at least 15
    local l=$(( $(left) - ${2:-0} ))
    [ "$1" -lt "$l" ] && l=$1
    [ "$l" -lt 15 ] && l=15
    echo "$l"
}
status=()
note() { status+=("$1"); echo "gpu_check: $1 ($(elapsed) s)"; }
run_part() {  # run_part NAME SECONDS cmd...: the command in its own process group, under a hard limit of
    # SECONDS + 20 (its own budget is inside): at the limit the whole group (pytest-xdist workers, ncu and its
    # launcher, data-loader workers, ranks) gets SIGTERM, then SIGKILL, so nothing it started runs on
    local name=$1 secs=$2; shift 2
    echo; echo "== part $name: at most ${secs} s (elapsed $(elapsed) s of $LIMIT_S)"
    local t0=$(date +%s) rc
    if command -v setsid > /dev/null; then setsid "$@" & else "$@" & fi  # no setsid: the command alone
    local pid=$! hard=$(( $(date +%s) + secs + 20 ))
    while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$hard" ]; do sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "gpu_check: part $name past its limit: stopping its process group"
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid"
    rc=$?
    kill -KILL -- "-$pid" 2>/dev/null  # anything of the group still left (orphaned workers)
    note "part $name rc=$rc in $(( $(date +%s) - t0 )) s"
    return $rc
}
echo "gpu_check: parts${parts}in $OUT, limit ${LIMIT_S} s$([ -n "$REHEARSE" ] && echo ', REHEARSAL (CPU, tiny sizes)')"
rc_all=0

# Predictions for part 4 in the background: at once if the committed sass_cost JSON is of these kernels
PRED_DIR=${TMPDIR:-/tmp}/gpu_check_predictions_$$
if want 4; then
    "$PY" bench/tools/ncu_kernels.py predict --out "$PRED_DIR" --timeout 200 > "$PRED_DIR.log" 2>&1 &
    pred_pid=$!
fi

# 1. environment
run_part 1 60 "$PY" bench/tools/gpu_parts.py env --out "$OUT/p1_env.json" || rc_all=1

# 2. correctness: the CUDA-marked tests, then the equivalence tests with their ops on the GPU
if want 2; then
    t2=$(cap "$P2_S" 120)
    flags=(-q -p bench.tools.pytest_gpu -p no:cacheprovider -o addopts= --continue-on-collection-errors)
    if [ -z "$REHEARSE" ]; then
        xdist=; "$PY" -c "import xdist" 2>/dev/null && xdist=1
        "$PY" -c "import pytest_timeout" 2>/dev/null && flags+=(--timeout 100)
        # the build without inline asm runs as part 2c, under its own label (not through the subprocess test)
        sel_cuda=(-m cuda tests -k "not build_without_inline_asm")
        sel_eq=(-m "not cuda" tests/test_ops_block.py tests/test_ops_lrn.py tests/test_ops_relu_maxpool.py
                tests/test_ops_maxpool.py tests/test_ops_dropout.py tests/test_ops_common.py
                tests/test_op_contracts.py)
        ops_on=cuda
    else  # the dry-run mode of tests/test_ops_cuda.py, and one equivalence test through the wrapper
        sel_cuda=(tests/test_ops_cuda.py -k "relu_lrn_nan_inf")
        sel_eq=(tests/test_ops_maxpool.py -k "matches_reference and relu_max_pool2d")
        ops_on=cpu
    fi
    t2a=$(( t2 * 2 / 3 )); t2_start=$(date +%s)
    GPU_CHECK_TESTS_JSON="$OUT/p2_tests.json" GPU_CHECK_TESTS_LABEL=cuda_marked \
        ALEXNET_CUDA_TESTS_ON=$([ -n "$REHEARSE" ] && echo cpu) \
        run_part "2a (pytest ${sel_cuda[*]})" "$t2a" "$PY" -m pytest "${flags[@]}" \
        ${xdist:+-n "${TEST_WORKERS:-4}"} "${sel_cuda[@]}" || rc_all=1
    t2b=$(( t2 - ( $(date +%s) - t2_start ) ))  # what part 2a left of part 2's cap, at least 40 s
    t2b=$(cap "$(( t2b > 40 ? t2b : 40 ))" 110)
    GPU_CHECK_TESTS_JSON="$OUT/p2_tests.json" GPU_CHECK_TESTS_LABEL=equivalence_ops_on_gpu \
        GPU_CHECK_OPS_ON=$ops_on GPU_CHECK_MAX_EXAMPLES=${MAX_EXAMPLES:-$([ -n "$REHEARSE" ] && echo 1 || echo 3)} \
        run_part "2b (equivalence tests, ops on $ops_on)" "$t2b" "$PY" -m pytest "${flags[@]}" \
        ${xdist:+-n "${EQ_WORKERS:-6}"} "${sel_eq[@]}" || rc_all=1
    # 2c: the CUDA tests again with every kernel built without inline asm (ALEXNET_NO_ASM=1; test names
    # carry [no_asm]): a failure in 2a alone is the inline PTX's, in both the algorithm's
    t2c=$(cap "${P2C_S:-90}" 100)
    GPU_CHECK_TESTS_JSON="$OUT/p2_tests.json" GPU_CHECK_TESTS_LABEL=cuda_marked_no_asm ALEXNET_NO_ASM=1 \
        ALEXNET_CUDA_TESTS_ON=$([ -n "$REHEARSE" ] && echo cpu) \
        run_part "2c (pytest ${sel_cuda[*]}, ALEXNET_NO_ASM=1)" "$t2c" "$PY" -m pytest "${flags[@]}" \
        ${xdist:+-n "${TEST_WORKERS:-4}"} "${sel_cuda[@]}" || rc_all=1
fi

# 3. the op benchmark: fused vs eager, float32 and bfloat16, batch 128 (torch.compile is part 6)
if want 3; then
    t3=$(cap "$P3_S" 100)
    extra=()
    [ -n "$REHEARSE" ] && extra=(--quick --ops relu_max_pool2d,dropout --cpu-batch 2 --dtypes float32)
    [ -n "${GRAPH:-}" ] && extra+=(--cuda-graph)
    run_part 3 "$t3" "$PY" bench/fused_vs_eager.py --no-compile --no-model --json-only --name p3_ops --out "$OUT" \
        --max-seconds "$(( t3 - 10 ))" "${extra[@]}" || rc_all=1
fi

# 4. Nsight Compute on each fused kernel, beside the static prediction
if want 4; then
    t4=$(cap "$P4_S" 60)
    if kill -0 "$pred_pid" 2>/dev/null; then
        echo "waiting at most 20 s for the background prediction"
        for _ in $(seq 20); do kill -0 "$pred_pid" 2>/dev/null || break; sleep 1; done
        kill "$pred_pid" 2>/dev/null
    fi
    cat "$PRED_DIR.log" 2>/dev/null
    extra=()
    [ -n "$REHEARSE" ] && extra=(--batch 2 --dtypes float32)
    run_part 4 "$t4" "$PY" bench/tools/ncu_kernels.py run --out "$OUT/p4_ncu.json" --raw "$OUT/p4_ncu_raw.csv" \
        --budget "$t4" --predictions-dir "$PRED_DIR" "${extra[@]}" || rc_all=1
fi

# 5. a whole AlexNet training step: fused, eager, torch.compile of each, float32 and bfloat16
if want 5; then
    t5=$(cap 100000)
    extra=()
    [ -n "$REHEARSE" ] && extra=(--rehearse --no-compile)
    run_part 5 "$t5" "$PY" bench/tools/gpu_parts.py model --out "$OUT/p5_model.json" --budget "$(( t5 - 5 ))" \
        "${extra[@]}" || rc_all=1
fi

# 6. torch.compile of the reference ops, one shape per op first (--order breadth)
if want 6; then
    reserve=0; want 7 && reserve=$P7_S
    t6=$(cap "$P6_S" "$reserve")
    extra=()
    [ -n "$REHEARSE" ] && extra=(--quick --ops relu_max_pool2d,dropout --cpu-batch 2 --dtypes float32)
    run_part 6 "$t6" "$PY" bench/fused_vs_eager.py --no-model --json-only --order breadth --name p6_compile \
        --out "$OUT" --max-seconds "$(( t6 - 25 ))" "${extra[@]}" || rc_all=1
fi

# 7. the two towers as two gloo ranks on the one GPU (bounded, a correctness check: first); then
#    python -m train.run on the built-in dataset with what is left (stopped by SIGTERM, epochs done kept)
if want 7; then
    extra=()
    [ -n "$REHEARSE" ] && extra=(--rehearse)
    run_part 7b "$(cap 60 40)" "$PY" bench/tools/gpu_parts.py split --out "$OUT/p7_train.json" "${extra[@]}" || rc_all=1
    t7=$(cap "$P7_S")
    run_part 7a "$t7" "$PY" bench/tools/gpu_parts.py train --out "$OUT/p7_train.json" --budget "$(( t7 - 10 ))" \
        "${extra[@]}" || rc_all=1
fi

rm -rf "$PRED_DIR" "$PRED_DIR.log" "$OUT"/*.tmp 2>/dev/null
echo
echo "== summary ($(elapsed) s of $LIMIT_S)"
for s in "${status[@]}"; do echo "  $s"; done
"$PY" bench/tools/gpu_summary.py "$OUT" --brief 2>&1 | tail -60
ls -l "$OUT"
return $rc_all
}

# everything printed also goes to the log in $OUT as it is printed; one line, so that bash has read the whole
# script before it runs (an edit of this file during a run cannot change what runs)
set -o pipefail; main 2>&1 | tee -a "$LOG"; exit $?
