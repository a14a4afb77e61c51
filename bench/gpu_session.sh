#!/usr/bin/env bash
# The training GPU session on the device machine (see ../shared/gpu/README.md), from the repo root,
# carrying .whl/ (bash ../shared/gpu/make_wheelhouse.sh with
# EXTRA_WHEELS="google-re2==1.1.20251105 pytest-timeout==2.4.0 pydantic==2.14.4
# pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0"):
#   bash bench/gpu_session.sh tests [PATTERN]       # pytest -m gpu (gpu_smoke recipe, QLoRA, hf on GPU)
#   bash bench/gpu_session.sh packing                # the bf16 packing test (tests/test_training_packing.py)
#   bash bench/gpu_session.sh bench [RUNS] [NAME]    # the training benchmark (bench_training.py)
#   bash bench/gpu_session.sh profile                # where a packed step's time goes
#   bash bench/gpu_session.sh moe                    # one MoE block: Unsloth's against ours
#   bash bench/gpu_session.sh head                   # the trained-positions LM head, before and now
# Logs and results go to $OUT (or /tmp/gpu-out); the installed wheels stay in /tmp/site while warm.
set -uo pipefail
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 TOKENIZERS_PARALLELISM=false
export RECIPE_CACHE=/tmp/recipe-cache
if [ ! -f /tmp/site/.installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >/dev/null 2>&1 || { echo "wheel install failed"; exit 3; }
  touch /tmp/site/.installed
fi
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1
case "${1:-tests}" in
  tests)
    python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu_training.py ${2:+-k "$2"} 2>&1 \
      | tee "$out/gpu_tests.log" | tail -n 60 ;;
  packing)
    # The bf16 packed-vs-unpacked test: compiled FlexAttention, gradients, on this GPU.
    timeout "${BUDGET:-150}" python3 -m pytest -m gpu -q -s -p no:cacheprovider \
      tests/test_training_packing.py 2>&1 | tee "$out/gpu_packing.log" | tail -n 8 ;;
  moe)
    # One MoE block, Unsloth's expert path against the runner's grouped forward.
    timeout "${BUDGET:-200}" python3 bench/bench_moe.py --work /tmp/bench --out "$out" 2>&1 \
      | tee "$out/moe.log" | tail -n 12 ;;
  head)
    timeout "${BUDGET:-150}" python3 bench/bench_trained_head.py --out "$out" 2>&1 \
      | tee "$out/head.log" | tail -n 6 ;;
  profile)
    timeout "${BUDGET:-300}" python3 bench/bench_training_profile.py --work /tmp/bench --out "$out" ${PROFILE_ARGS:-} \
      2>&1 | tee "$out/profile.log" | tail -n 30
    gzip -f "$out"/*.trace.json 2>/dev/null ;;
  bench)
    # The training benchmark (bench_training.py's DEFAULT_RUNS, or the runs in $2), results
    # named $3 (training.md); an engine still running after $BUDGET seconds is stopped.
    python3 bench/bench_training.py all ${2:+--runs "$2"} --name "${3:-training}" --work /tmp/bench \
      --out "$out" --budget "${BUDGET:-540}" 2>&1 | tee "$out/bench-${3:-training}.log" | tail -n 70
    tar -czf "$out/engine-logs-${3:-training}.tgz" -C "$out" --remove-files \
      $(cd "$out" && ls engine-*.log) ;;
esac
