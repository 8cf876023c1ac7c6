# Third session, call 8 (carry .carry/h1, a fresh machine): Llama-3.1-8B shapes, bf16 against float8 projections
# (fp8=1), each in a fresh process.
set -x
source benchmarks/device/env.sh
mkdir -p /tmp/shared && tar xzf .carry/h1/shared.tgz -C /tmp/shared
mkdir -p /tmp/llama && cp /tmp/shared/models/llama-3.1-8b-config/* /tmp/shared/models/llama-3.1-tokenizer/* /tmp/llama/
timeout 250 python3 benchmarks/engine_variants.py --model-dir /tmp/llama --data-dir /tmp/shared/data --n 10000 \
    --timeout 115 --variant "" --variant fp8=1 --out $OUT/engine_variants_llama8b_fp8_h8.json 2>&1 | grep -v "^W1" | tail -5
