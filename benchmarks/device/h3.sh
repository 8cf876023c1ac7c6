# Third session, call 3 (carry .carry/c2, the second GGUF piece): the Llama-3.1-8B-shaped engine with the second
# session's settings (producer thread, eager layers) against the new defaults, each in a fresh process.
set -x
source benchmarks/device/env.sh
cp .carry/c2/gB /tmp/parts/
mkdir -p /tmp/llama && cp /tmp/shared/models/llama-3.1-8b-config/* /tmp/shared/models/llama-3.1-tokenizer/* /tmp/llama/
timeout 300 python3 benchmarks/engine_variants.py --model-dir /tmp/llama --data-dir /tmp/shared/data --n 12000 --timeout 140 \
    --variant producer=thread,compile=0 --variant "" --out $OUT/engine_variants_llama8b_h3.json 2>&1 | grep -v "^W1" | tail -5
