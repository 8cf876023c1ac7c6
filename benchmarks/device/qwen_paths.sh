#!/usr/bin/env bash
# On the device, one GPU, after train_qwen_3way.sh --stages qwen (or --stages shipped_teacher, with
# MODEL_DIR=$WORK/qwen-3way-shipped) on the same warm machine: the Qwen three-way teacher (MODEL_DIR, default
# $WORK/qwen-3way, its base the carried GGUF) under every engine path of gpu_scan.py --accuracy-model (fp32, bf16,
# the fused kernels on ragged and on padded batches, CUDA graphs, float8 and their pairs) on SST-2 dev, the
# hand-labelled development messages and SMS ham. Writes $OUT/qwen_paths.json and its log. Extra arguments go to
# gpu_scan.py (e.g. --accuracy-n 200 for a short run).
set -euo pipefail
bash benchmarks/device/setup_env.sh
source benchmarks/device/env.sh
need base
WORK=${WORK:-/tmp/threeway}
export SCREENER_CACHE=$WORK/cache CUDA_VISIBLE_DEVICES=0
MODEL_DIR=${MODEL_DIR:-$WORK/qwen-3way}
if [ ! -e "$MODEL_DIR/screener_model.json" ]; then
  echo "no teacher in $MODEL_DIR: run train_qwen_3way.sh --stages qwen (or shipped_teacher) first" >&2
  exit 3
fi
timeout 540 python3 benchmarks/gpu_scan.py --models --accuracy-model "$MODEL_DIR" --out "$OUT/qwen_paths.json" \
    "$@" 2>&1 | tee "$OUT/qwen_paths.log"
