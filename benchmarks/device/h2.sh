# Third session, call 2 (carry .carry/c1 for its first GGUF piece): Llama-3.1-8B-shaped engine, the second
# session's settings (producer thread, eager layers) against the new defaults, each in a fresh process.
set -x
source benchmarks/device/env.sh
cp .carry/c1/gA /tmp/parts/
mkdir -p /tmp/llama && cp /tmp/shared/models/llama-3.1-8b-config/* /tmp/shared/models/llama-3.1-tokenizer/* /tmp/llama/
timeout 400 python3 benchmarks/engine_variants.py --model-dir /tmp/llama --data-dir /tmp/shared/data --n 12000 \
    --variant producer=thread,compile=0 --variant "" --out $OUT/engine_variants_llama8b_h2.json 2>&1 | grep -v "^W1" | tail -5
