#!/usr/bin/env bash
# The GPU check (`make gpu-check`). On a machine with a CUDA GPU, in under 8 minutes: the CUDA tests
# (pytest -m cuda), tinyshakespeare prepared with GPT-2 BPE, GPT-2 small trained 200 steps on it in bf16
# with torch.compile, a sample from it, and the bench's train-gpt2 / generate-gpt2 rows on the GPU; then one
# summary table. Without CUDA, or with --dry-run, it prints what it would run and exits 0.
#
# Settings (environment): PYTHON (default .venv/bin/python), TINYSHAKESPEARE (input.txt; default: found
# under $MINIGPT_SHARED, ../shared or shared), GPU_CHECK_OUT (default out/gpu_check), GPU_CHECK_BUDGET
# (seconds for everything, default 450). Logs: $GPU_CHECK_OUT/logs/STEP.log.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${GPU_CHECK_OUT:-out/gpu_check}
BUDGET=${GPU_CHECK_BUDGET:-450}
DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument '$arg'; use --dry-run or --help" >&2; exit 2 ;;
  esac
done

INPUT=${TINYSHAKESPEARE:-}
if [ -z "$INPUT" ]; then
  for cand in "${MINIGPT_SHARED:-/nonexistent}/data/tinyshakespeare/input.txt" \
              "${MINIGPT_SHARED:-/nonexistent}/tinyshakespeare/input.txt" \
              ../shared/data/tinyshakespeare/input.txt shared/data/tinyshakespeare/input.txt; do
    if [ -f "$cand" ]; then INPUT=$cand; break; fi
  done
fi
INPUT=${INPUT:-data/tinyshakespeare/input.txt}

# name | seconds at most | command
STEPS=(
  "cuda-tests|150|$PY -m pytest -q -m cuda tests/test_cuda.py"
  "prepare|60|$PY data/prepare.py tinyshakespeare --input=$INPUT --tokenizer=gpt2 --out=$OUT/data --overwrite"
  "train|200|$PY train.py --preset=gpt2 --dataset=$OUT/data --out_dir=$OUT/run --overwrite --max_iters=200 --batch_size=8 --gradient_accumulation_steps=1 --learning_rate=6e-4 --min_lr=6e-5 --warmup_iters=20 --lr_decay_iters=200 --eval_interval=100 --eval_iters=20 --log_interval=20 --dropout=0.0 --device=cuda --dtype=bfloat16 --compile=true --plot=false"
  "sample|60|$PY sample.py --model=$OUT/run --num_samples=1 --max_new_tokens=100 --start=ROMEO: --device=cuda --dtype=bfloat16 --compile=true"
  "bench-train|150|$PY -m minigpt bench train-gpt2 --quick --device=cuda"
  "bench-generate|200|$PY -m minigpt bench generate-gpt2 --quick --device=cuda"
)

has_cuda() { "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }

if [ "$DRY" = 1 ] || ! has_cuda; then
  why=$([ "$DRY" = 1 ] && echo "--dry-run" || echo "no CUDA GPU here")
  echo "gpu check, dry run ($why): on a CUDA machine it would run, within ${BUDGET}s in all:"
  for step in "${STEPS[@]}"; do
    IFS='|' read -r name cap cmd <<<"$step"
    printf '  %-15s (at most %ss)  %s\n' "$name" "$cap" "$cmd"
  done
  echo "then print one table: step, result, seconds, last line of its output (logs in $OUT/logs/)"
  exit 0
fi

mkdir -p "$OUT/logs"
"$PY" -c "import torch; print('gpu check on', torch.cuda.get_device_name(), '| torch', torch.__version__)"
start=$(date +%s)
rows=()
failed=0
for step in "${STEPS[@]}"; do
  IFS='|' read -r name cap cmd <<<"$step"
  left=$(( BUDGET - ($(date +%s) - start) ))
  limit=$(( cap < left ? cap : left ))
  if [ "$limit" -le 0 ]; then
    rows+=("| $name | skipped: the ${BUDGET}s budget is spent | 0 | |"); failed=1; continue
  fi
  echo "== $name (at most ${limit}s): $cmd"
  t0=$(date +%s)
  timeout "$limit" bash -c "$cmd" >"$OUT/logs/$name.log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - t0 ))
  last=$(tr '\r' '\n' <"$OUT/logs/$name.log" | grep -v '^\s*$' | tail -n 1 | cut -c1-160 | tr '|' '/')
  case $rc in
    0) result=ok ;;
    124) result="timed out after ${limit}s"; failed=1 ;;
    *) result="FAILED (exit $rc)"; failed=1 ;;
  esac
  rows+=("| $name | $result | $secs | $last |")
done

echo
echo "| step | result | seconds | last line of its output |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "total $(( $(date +%s) - start ))s; logs in $OUT/logs/; the bench tables are in bench-train.log and bench-generate.log"
exit $failed
