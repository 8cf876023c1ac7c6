#!/usr/bin/env bash
# On the device: benchmarks/scan_e2e.py --parts gpu, `screener scan` of a 300k-message DuckDB archive with
# smollm2-sst2 (its base set to the carried GGUF) beside the classifier alone, on one GPU and then on every GPU of
# the host. Needs the base, smollm2 and duckdb bundles. Writes $OUT/scan_gpu_h200.json (one run per device) and
# the log. Extra arguments go to scan_e2e.py.
set -euo pipefail
bash benchmarks/device/setup_env.sh
source benchmarks/device/env.sh
need base smollm2 duckdb
smollm2_model /tmp/smolmodel
devices=(cuda:0)
[ "$GPUS" -gt 1 ] && devices+=(cuda)
for dev in "${devices[@]}"; do
  timeout 270 python3 benchmarks/scan_e2e.py --parts gpu --model /tmp/smolmodel --device "$dev" --messages 300000 \
      --out "/tmp/scan_gpu_${dev/:/}.json" "$@" 2>&1 | tee -a "$OUT/scan_gpu_h200.log"
done
python3 - "$OUT/scan_gpu_h200.json" "${devices[@]}" <<'PY'
import json
import sys

out, devices = sys.argv[1], sys.argv[2:]
records = [json.load(open(f"/tmp/scan_gpu_{d.replace(':', '')}.json")) for d in devices]
json.dump({"machine": f"{records[0]['machine']['cpus']} CPU cores",
           "command": " && ".join(r["command"] for r in records),
           "runs": [r["gpu_scan"] for r in records]}, open(out, "w"), indent=1)
PY
