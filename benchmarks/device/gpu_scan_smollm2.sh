#!/usr/bin/env bash
# On the device: benchmarks/gpu_scan.py for SmolLM2-135M (real weights from the GGUF) on one GPU and on every GPU
# of the host, with the profile and the fp32 yardstick. Needs the base and smollm2 bundles. Writes
# $OUT/gpu_scan.json (merged with Llama's records when gpu_scan_llama8b.sh ran earlier on this machine),
# $OUT/gpu_scan_smollm2_profile.txt and the log. Extra arguments go to gpu_scan.py.
set -euo pipefail
bash benchmarks/device/setup_env.sh
source benchmarks/device/env.sh
need base smollm2
[ -e "$RESULTS/gpu_scan.json" ] && cp "$RESULTS/gpu_scan.json" "$OUT/"
timeout 540 python3 benchmarks/gpu_scan.py --models smollm2 --smollm2-gguf "$GGUF" --padded-n 4096 \
    --gpus "$GPUS" --profile --merge --out "$OUT/gpu_scan.json" "$@" 2>&1 | tee "$OUT/gpu_scan_smollm2.log"
mv "$OUT/smollm2-135m-instruct-gguf-q4_1_profile.txt" "$OUT/gpu_scan_smollm2_profile.txt"
cp "$OUT/gpu_scan.json" "$RESULTS/"
