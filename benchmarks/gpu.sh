#!/usr/bin/env bash
# All benchmarks at realistic sizes on one CUDA GPU (H100/H200): a random-weight ~1B Llama (TinyLlama's shape) in
# bf16, N=32 samples, 512 new tokens (the multi-question sampling run: 8 questions x 8 samples, batch 64, 256 new
# tokens). Target: under 10 minutes in all. Rows land in benchmarks/RESULTS.md under the
# card's name (torch.cuda.get_device_name).
#
#   bash benchmarks/gpu.sh                 # from a checkout; needs torch with CUDA, transformers, lm-eval, math-verify
#   SMOKE=1 bash benchmarks/gpu.sh         # the same steps on CPU with a tiny model (checks the script; no rows)
#
# Environment: PYTHON (default python3), N (32), T (512), BENCH_CACHE (where the 1B model is built once,
# default /tmp/lm_eval_swift_bench), DATA (folder with math_test.jsonl for the grading benchmark; default
# ../shared/data or ./shared/data), LOG (a copy of the output, default /tmp/lm_eval_swift_bench/gpu.log).
# The grading benchmark needs no GPU: it runs on the CPUs alongside the GPU ones (it uses 1 + 4 worker processes).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
N=${N:-32}
T=${T:-512}
export LM_EVAL_SWIFT_BENCH_CACHE=${BENCH_CACHE:-/tmp/lm_eval_swift_bench}
mkdir -p "$LM_EVAL_SWIFT_BENCH_CACHE"
LOG=${LOG:-$LM_EVAL_SWIFT_BENCH_CACHE/gpu.log}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
[ -n "${DATA:-}" ] && export LM_EVAL_SWIFT_DATA=$DATA
exec > >(tee "$LOG") 2>&1

# the package: installed, else installed now (no dependencies, no network), else from the source tree
if ! "$PY" -c "import lm_eval_swift" 2>/dev/null; then
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . || echo "pip install failed: using PYTHONPATH"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" - <<'EOF'
import importlib, os, sys
import torch
missing = [m for m in ("transformers", "lm_eval", "math_verify", "yaml", "safetensors") if importlib.util.find_spec(m) is None]
print(f"torch {torch.__version__}, CUDA {torch.cuda.is_available()}:", torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")
if missing or not (torch.cuda.is_available() or os.environ.get("SMOKE") == "1"):
    sys.exit(f"cannot run: missing {missing} (pip install -e . brings them)" if missing else "cannot run: no CUDA device")
EOF
then
    exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

MODEL=(--dtype bfloat16 --size 1b)
GPU=(--device cuda "${MODEL[@]}")
GRADING=()
QUESTIONS=(--questions 8 --n 8 --batch-size 64 --max-gen-toks 256)
if [ "${SMOKE:-0}" = 1 ]; then  # check the script itself on a CPU: tiny model, nothing appended to RESULTS.md
    MODEL=(--dtype float32 --size tiny)
    GPU=(--device cpu "${MODEL[@]}" --no-results)
    GRADING=(--quick --no-results)
    QUESTIONS=(--questions 2 --n 2 --batch-size 4 --max-gen-toks 16)
    N=4 T=16
fi
failed=0
step() {  # step NAME TIMEOUT_S ARGS...: run one benchmark with a time limit, report its wall time
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    echo "=== $name (limit ${limit} s) ==="
    timeout "$limit" "$PY" "$@"
    rc=$?
    echo "=== $name: exit $rc after $(($(date +%s) - start)) s ==="
    [ $rc -eq 0 ] || failed=1
}

overall=$(date +%s)
# grading needs only CPUs: run it beside the GPU benchmarks
"$PY" benchmarks/grading_throughput.py "${GRADING[@]}" >"$LM_EVAL_SWIFT_BENCH_CACHE/grading.log" 2>&1 &
grading=$!

# the model, built once into BENCH_CACHE with all CPU threads; every benchmark loads it from there
step build_model 180 benchmarks/_common.py "${MODEL[@]}" --model-cache "$LM_EVAL_SWIFT_BENCH_CACHE"
step capture_overhead 150 benchmarks/capture_overhead.py "${GPU[@]}" --n "$N" --new-tokens "$T" --pairs 2 --step-pairs 100
step selection_cost 120 benchmarks/selection_cost.py "${GPU[@]}" --n "$N" --new-tokens "$T" --repeats 2
step sampling_throughput 150 benchmarks/sampling_throughput.py "${GPU[@]}" --n "$N" --max-gen-toks "$T" --pairs 2
# packing: several questions' samples per decode batch vs one question at a time vs stock hf
step sampling_throughput_questions 150 benchmarks/sampling_throughput.py "${GPU[@]}" "${QUESTIONS[@]}" --pairs 2
# the sharded path: lm-eval's parallelize=True (device_map over the visible GPUs) for both models (GPU only)
[ "${SMOKE:-0}" = 1 ] || step sampling_throughput_parallelize 60 benchmarks/sampling_throughput.py "${GPU[@]}" --n "$N" --max-gen-toks 128 \
    --pairs 1 --prompts few-shot --parallelize

echo "=== grading_throughput (CPU, started at the beginning) ==="
wait $grading
rc=$?
cat "$LM_EVAL_SWIFT_BENCH_CACHE/grading.log"
echo "=== grading_throughput: exit $rc ==="
[ $rc -eq 0 ] || failed=1
echo "=== all done in $(($(date +%s) - overall)) s (exit $failed); results in benchmarks/RESULTS.md, log in $LOG ==="
exit $failed
