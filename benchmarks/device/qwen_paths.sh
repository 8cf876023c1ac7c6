#!/usr/bin/env bash
# On the device, one GPU, after train_qwen_3way.sh --stages qwen on the same warm machine: the trained Qwen
# three-way teacher ($WORK/qwen-3way, its base the carried GGUF) under every engine path of gpu_scan.py
# --accuracy-model (fp32, bf16, the fused kernels, CUDA graphs, float8 and their pairs) on SST-2 dev, the
# hand-labelled development messages and SMS ham. Writes $OUT/qwen_paths.json and its log. Extra arguments go to
# gpu_scan.py (e.g. --accuracy-n 200 for a short run).
set -euo pipefail
bash benchmarks/device/setup_env.sh
source benchmarks/device/env.sh
need base
WORK=${WORK:-/tmp/threeway}
export SCREENER_CACHE=$WORK/cache CUDA_VISIBLE_DEVICES=0
if [ ! -e "$WORK/qwen-3way/screener_model.json" ]; then
  echo "no trained teacher in $WORK/qwen-3way: run train_qwen_3way.sh --stages qwen first" >&2
  exit 3
fi
timeout 540 python3 benchmarks/gpu_scan.py --models --accuracy-model "$WORK/qwen-3way" --out "$OUT/qwen_paths.json" \
    "$@" 2>&1 | tee "$OUT/qwen_paths.log"
