# Third session, call 2 (carry .carry/c1 for its first GGUF piece): gpu_scan.py for Llama-3.1-8B shapes on 1 and 2
# GPUs.
set -x
source benchmarks/device/env.sh
cp .carry/c1/gA /tmp/parts/
timeout 500 python3 benchmarks/gpu_scan.py --models llama8b --data-dir /tmp/shared/data --llama-config /tmp/shared/models/llama-3.1-8b-config --llama-tokenizer /tmp/shared/models/llama-3.1-tokenizer --gpus 2 --out $OUT/gpu_scan_llama.json 2>&1 | grep -v "^W1" | tee $OUT/llama.log | tail -12
