#!/usr/bin/env bash
# On the device: benchmarks/gpu_scan.py for Llama-3.1-8B shapes (random bf16 weights) on one GPU and on every GPU
# of the host, with the profile. Needs the base bundle. Writes $OUT/gpu_scan.json (merged with SmolLM2's records
# when gpu_scan_smollm2.sh ran earlier on this machine), $OUT/gpu_scan_llama8b_profile.txt and the log.
# Extra arguments go to gpu_scan.py.
set -euo pipefail
bash benchmarks/device/setup_env.sh
source benchmarks/device/env.sh
need base
[ -e "$RESULTS/gpu_scan.json" ] && cp "$RESULTS/gpu_scan.json" "$OUT/"
nvidia-smi --query-gpu=name,memory.used --format=csv
timeout 540 python3 benchmarks/gpu_scan.py --models llama8b --gpus "$GPUS" --profile --merge \
    --out "$OUT/gpu_scan.json" "$@" 2>&1 | tee "$OUT/gpu_scan_llama8b.log"
mv "$OUT/llama-3.1-8b-shapes-random-bf16_profile.txt" "$OUT/gpu_scan_llama8b_profile.txt"
cp "$OUT/gpu_scan.json" "$RESULTS/"
