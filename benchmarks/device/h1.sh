# Third session, call 1 (carry .carry/h1): data, Llama config and tokenizer, gguf; SmolLM2-shaped engine variants
# with random weights, each in a fresh process: producer thread or process, eager or compiled layers, 2 GPUs.
set -x
source benchmarks/device/env.sh
mkdir -p /tmp/smol /tmp/site /tmp/parts /tmp/shared
tar xzf .carry/h1/shared.tgz -C /tmp/shared
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/h1/gguf-*.whl
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.device_count())"
timeout 560 python3 benchmarks/engine_variants.py --model-dir .carry/h1/smol-shapes --data-dir /tmp/shared/data \
    --n 50000 --timeout 110 --variant producer=thread,compile=0 --variant compile=0 --variant producer=thread --variant "" \
    --variant gpus=2 --out $OUT/engine_variants_smollm2_h1.json 2>&1 | grep -v "^W1" | tail -8
