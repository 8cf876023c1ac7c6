#!/usr/bin/env bash
# On the device: benchmarks/ray_scan.py on GPUs, a 50k-message scan with smollm2-sst2 (its base set to the carried
# GGUF) by the local engine on one GPU, then by the Ray engine with 1 and 2 GPU actors on a local Ray instance.
# Needs the base, smollm2, duckdb and ray bundles. Writes $OUT/ray_scan_gpu.json and the log. Extra arguments go
# to ray_scan.py.
set -euo pipefail
bash benchmarks/device/setup_env.sh
source benchmarks/device/env.sh
need base smollm2 duckdb ray
smollm2_model /tmp/smolmodel
workers=1
[ "$GPUS" -gt 1 ] && workers="1,$GPUS"
timeout 540 python3 benchmarks/ray_scan.py --model /tmp/smolmodel --device cuda --messages 50000 --users 2000 \
    --cpus 16 --rows-per-task 12500 --workers "$workers" --out "$OUT/ray_scan_gpu.json" "$@" 2>&1 \
    | tee "$OUT/ray_scan_gpu.log"
