#!/usr/bin/env bash
# On the device: copies the three-way pieces this call carries (prepare_threeway_carry.sh: .carry/q/q00..q27,
# .carry/minilm-K/m?? with minilm.sha256, sentiment140_sample.csv) into /tmp/parts, where a warm machine keeps
# them between calls, and says which are still missing. Safe to run again; train_qwen_3way.sh runs it first.
set -euo pipefail
shopt -s nullglob
mkdir -p /tmp/parts
for f in .carry/*/q[0-9][0-9] .carry/*/m[0-9][0-9] .carry/*/minilm.sha256 .carry/*/sentiment140_sample.csv; do
  cmp -s "$f" "/tmp/parts/$(basename "$f")" || cp "$f" /tmp/parts/
done
missing=()
for k in $(seq -w 0 27); do
  [ -e "/tmp/parts/q$k" ] || missing+=("q$k")
done
have_m=(/tmp/parts/m[0-9][0-9])
echo "three-way pieces in /tmp/parts: $((28 - ${#missing[@]})) of 28 Qwen pieces, ${#have_m[@]} MiniLM pieces" \
     "$([ -e /tmp/parts/minilm.sha256 ] && echo '(with minilm.sha256)')," \
     "sentiment140 $([ -e /tmp/parts/sentiment140_sample.csv ] && echo present || echo absent)"
[ ${#missing[@]} -eq 0 ] || echo "missing Qwen pieces: ${missing[*]}"
