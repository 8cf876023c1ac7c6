# Third session, call 1 (carry .carry/h1): data, Llama config and tokenizer, gguf; SmolLM2-shaped engine variants
# with random weights, each in a fresh process: producer thread against the producer process, and 2 GPUs.
# (The session's run also had compile=0/1 variants of a torch.compile option since taken out; see
# benchmarks/results/engine_variants_smollm2_producer_h200.json.)
set -x
source benchmarks/device/env.sh
mkdir -p /tmp/smol /tmp/site /tmp/parts /tmp/shared
tar xzf .carry/h1/shared.tgz -C /tmp/shared
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/h1/gguf-*.whl
timeout 560 python3 benchmarks/engine_variants.py --model-dir .carry/h1/smol-shapes --data-dir /tmp/shared/data \
    --n 50000 --timeout 110 --variant producer=thread --variant "" \
    --variant gpus=2 --out $OUT/engine_variants_smollm2_h1.json 2>&1 | grep -v "^W1" | tail -8
