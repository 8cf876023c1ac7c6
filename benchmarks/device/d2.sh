set -x
source .carry/cmd/env.sh
cp .carry/c2/gB /tmp/parts/
mkdir -p /tmp/llama && cp /tmp/shared/models/llama-3.1-8b-config/* /tmp/shared/models/llama-3.1-tokenizer/* /tmp/llama/
# The attention kernels compared on Llama-3.1-8B shapes, each in a fresh process.
timeout 300 python3 benchmarks/engine_variants.py --model-dir /tmp/llama --data-dir /tmp/shared/data --n 12000 --variant "" --variant attention=cudnn_attention --out $OUT/engine_variants_llama8b.json 2>&1 | grep -v "^W1" | tail -5
