# Third session, call 7 (carry .carry/h1, a fresh machine), run at commit 25e669c (its options are gone since): how the producer's chunks grow, the old ramp (1,024
# texts, then 4x) against the new (512, then 2x), on one GPU and on two; SmolLM2 shapes, random weights.
set -x
source benchmarks/device/env.sh
mkdir -p /tmp/shared && tar xzf .carry/h1/shared.tgz -C /tmp/shared
timeout 400 python3 benchmarks/engine_variants.py --model-dir .carry/h1/smol-shapes --data-dir /tmp/shared/data \
    --n 50000 --timeout 100 --variant first_chunk=1024,chunk_growth=4 --variant "" \
    --variant first_chunk=1024,chunk_growth=4,gpus=2 --variant gpus=2 \
    --out $OUT/engine_variants_smollm2_ramp_h7.json 2>&1 | grep -v "^W1" | tail -8
