#!/usr/bin/env bash
# On the device: benchmarks/engine_variants.py, every variant in a fresh process, for one of these sets
# (bash benchmarks/device/engine_variants.sh SET); each writes $OUT/<its results file> and the log:
#   smollm2-shapes     SmolLM2 shapes, random weights: producer thread against the producer process, and every
#                      GPU of the host                    -> engine_variants_smollm2_producer_h200.json
#   smollm2-real       the same with the GGUF's real weights, also in calls of 65,536 messages
#                                                         -> engine_variants_smollm2_real_h200.json
#   tokenizer-threads  SmolLM2 shapes: the tokenizer's thread pool (RAYON_NUM_THREADS, TOKENIZERS_PARALLELISM)
#                                                         -> engine_variants_smollm2_tokenizer_threads_h200_16core.json
#   llama8b-attention  Llama-3.1-8B shapes: the default attention kernel against cuDNN's
#                                                         -> engine_variants_llama8b_h200.json
#   llama8b-fp8        Llama-3.1-8B shapes: bf16 against float8 projections -> engine_variants_llama8b_fp8_h200.json
# Needs the base bundle, and smollm2 for smollm2-real. Extra arguments go to engine_variants.py.
set -euo pipefail
bash benchmarks/device/setup_env.sh
source benchmarks/device/env.sh
set_name=${1:?give a set: smollm2-shapes, smollm2-real, tokenizer-threads, llama8b-attention or llama8b-fp8}
shift
need base
shapes=$BUNDLES/base/models/smollm2-135m-shapes
all_gpus=()
[ "$GPUS" -gt 1 ] && all_gpus=(--variant "gpus=$GPUS")
case "$set_name" in
  smollm2-shapes)
    out=engine_variants_smollm2_producer_h200.json
    args=(--model-dir "$shapes" --n 50000 --timeout 110 --variant producer=thread --variant ""
          ${all_gpus[@]+"${all_gpus[@]}"}) ;;
  smollm2-real)
    need smollm2
    out=engine_variants_smollm2_real_h200.json
    args=(--gguf "$GGUF" --n 50000 --window 65536 --timeout 120 --variant producer=thread --variant ""
          ${all_gpus[@]+"${all_gpus[@]}"}) ;;
  tokenizer-threads)
    out=engine_variants_smollm2_tokenizer_threads_h200_16core.json
    args=(--model-dir "$shapes" --n 50000 --variant "" --variant env.RAYON_NUM_THREADS=8
          --variant env.RAYON_NUM_THREADS=4 --variant env.TOKENIZERS_PARALLELISM=false) ;;
  llama8b-attention)
    out=engine_variants_llama8b_h200.json
    args=(--model-dir "$BUNDLES/llama-3.1-8b-shapes" --n 12000 --variant ""
          --variant attention=cudnn_attention) ;;
  llama8b-fp8)
    out=engine_variants_llama8b_fp8_h200.json
    args=(--model-dir "$BUNDLES/llama-3.1-8b-shapes" --n 10000 --timeout 115 --variant "" --variant fp8=1) ;;
  *)
    echo "unknown set $set_name" >&2
    exit 2 ;;
esac
timeout 560 python3 benchmarks/engine_variants.py "${args[@]}" --out "$OUT/$out" "$@" 2>&1 \
    | tee "$OUT/${out%.json}.log"
