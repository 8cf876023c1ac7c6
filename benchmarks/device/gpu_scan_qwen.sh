#!/usr/bin/env bash
# On the device: benchmarks/gpu_scan.py for Qwen2.5-1.5B shapes (random bf16 weights, three label words) on one
# GPU, with the fp32 yardstick. Needs the base bundle with models/qwen2.5-1.5b-shapes (config.json and tokenizer
# files). Writes $OUT/gpu_scan.json (merged with the other models' records when their gpu_scan_*.sh ran earlier on
# this machine) and the log. Extra arguments go to gpu_scan.py.
set -euo pipefail
bash benchmarks/device/setup_env.sh
source benchmarks/device/env.sh
need base
[ -e "$RESULTS/gpu_scan.json" ] && cp "$RESULTS/gpu_scan.json" "$OUT/"
nvidia-smi --query-gpu=name,memory.used --format=csv
timeout 540 python3 benchmarks/gpu_scan.py --models qwen1.5b --qwen-config "$BUNDLES/base/models/qwen2.5-1.5b-shapes" \
    --merge --out "$OUT/gpu_scan.json" "$@" 2>&1 | tee "$OUT/gpu_scan_qwen.log"
cp "$OUT/gpu_scan.json" "$RESULTS/"
