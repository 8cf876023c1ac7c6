# Third session, call 6 (no carry, right after call 5): SmolLM2 with real weights, producer thread against the
# producer process and 2 GPUs, each in a fresh process, in calls of 65,536 messages as well.
source benchmarks/device/env.sh
timeout 300 python3 benchmarks/engine_variants.py --gguf $GGUF --data-dir /tmp/shared/data --n 50000 --window 65536 \
    --timeout 120 --variant producer=thread --variant "" --variant gpus=2 \
    --out $OUT/engine_variants_smollm2_real_h6.json 2>&1 | grep -v "^W1\|GGUF tensors\|Loading weights" | tail -5
