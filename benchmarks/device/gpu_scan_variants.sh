#!/usr/bin/env bash
# On the device, one GPU: benchmarks/gpu_scan.py's engine variants in one call, each against the padded forward
# and the bf16 eager engine of the same run: bf16 eager, bf16 with the fused attention/rotary/SiLU kernels, float8
# with the fused activation quantizers, bf16 on CUDA graphs, the fused bf16 on CUDA graphs, float8 on CUDA graphs.
# First Llama-3.1-8B shapes (random bf16 weights), then SmolLM2-135M: its real weights, with the SST-2 dev
# agreement of float8 with fp32 (the shipped smollm2-sst2 over the carried GGUF), when the smollm2 bundle is
# assembled; its shapes with random weights and no agreement otherwise. Needs the base bundle (and smollm2 for the
# real weights). Writes $OUT/gpu_scan_variants.json (both models; each run adds to it as records come, so a run cut
# short by its timeout keeps what it finished), the profiler tables of Llama's bf16, float8 and fused engines
# (*_profile.txt) and the logs, and prints a summary. Extra arguments go to both gpu_scan.py runs.
set -euo pipefail
bash benchmarks/device/setup_env.sh
source benchmarks/device/env.sh
need base
out=$OUT/gpu_scan_variants.json
variants=(--variants engine engine_fused engine_fp8 engine_graphs engine_fused_graphs engine_fp8_graphs)
nvidia-smi --query-gpu=name,memory.used --format=csv
status=0
timeout 340 python3 benchmarks/gpu_scan.py --models llama8b "${variants[@]}" --paper-n 16 --padded-n 1024 \
    --profile-tables --out "$out" "$@" 2>&1 | tee "$OUT/gpu_scan_variants_llama8b.log" || status=$?
if [ -e "$BUNDLES/smollm2.done" ]; then
  smollm2=(--models smollm2 --smollm2-gguf "$GGUF")
  if [ -e screener/models/smollm2-sst2/adapter/adapter_model.safetensors ]; then
    smollm2_model /tmp/smollm2-sst2
    smollm2+=(--accuracy-model /tmp/smollm2-sst2)
  else
    echo "the tree has no screener/models/smollm2-sst2 adapter: no SST-2 float8 agreement"
  fi
else
  echo "smollm2 bundle not assembled: SmolLM2 in its shapes with random weights, no SST-2 float8 agreement"
  smollm2=(--models smollm2-shapes --smollm2-config "$BUNDLES/base/models/smollm2-135m-shapes")
fi
timeout 150 python3 benchmarks/gpu_scan.py "${smollm2[@]}" "${variants[@]}" --paper-n 8 --padded-n 2048 --merge \
    --out "$out" "$@" 2>&1 | tee "$OUT/gpu_scan_variants_smollm2.log" || status=$?
if [ "$status" -ne 0 ]; then  # a run cut short printed no summary: the one of what was saved
  [ -e "$out" ] && python3 -c 'import json, sys; sys.path.insert(0, "benchmarks"); from gpu_scan import summary
print(summary(json.load(open(sys.argv[1]))))' "$out"
  # Not 124, which would read as the whole call timing out.
  echo "a gpu_scan.py run ended with status $status (124: its timeout)" >&2
  exit 1
fi
