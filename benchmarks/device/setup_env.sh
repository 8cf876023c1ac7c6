#!/usr/bin/env bash
# On the device: stages the bundle pieces this call carries (.carry/NAME-K/, from prepare_carry.sh) in /tmp/parts
# and assembles every bundle whose pieces are all there: checks its sha256, unpacks it into /tmp/bundles/NAME and
# installs its wheels into /tmp/site. A warm machine keeps /tmp between calls, so a bundle's pieces may come in
# consecutive calls. Safe to run again; every other script here runs it first.
set -euo pipefail
source benchmarks/device/env.sh
shopt -s nullglob

for sum in .carry/*/*.sha256; do
  [ -e "$BUNDLES/$(basename "$sum" .sha256).done" ] || cp "$(dirname "$sum")"/* /tmp/parts/
done

for sum in /tmp/parts/*.sha256; do
  name=$(basename "$sum" .sha256)
  [ -e "$BUNDLES/$name.done" ] && continue
  pieces=(/tmp/parts/"$name".tar.gz.*-of-*)
  [ ${#pieces[@]} -gt 0 ] || continue
  n=${pieces[0]##*-of-}
  missing=()
  for k in $(seq 1 "$n"); do
    [ -e "/tmp/parts/$name.tar.gz.$k-of-$n" ] || missing+=("$k")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "$name: waiting for piece(s) ${missing[*]} of $n"
    continue
  fi
  got=$(for k in $(seq 1 "$n"); do cat "/tmp/parts/$name.tar.gz.$k-of-$n"; done | sha256sum | cut -d' ' -f1)
  if [ "$got" != "$(cat "$sum")" ]; then
    echo "$name: sha256 $got does not match $(cat "$sum"); pieces removed, carry them again" >&2
    rm -f /tmp/parts/"$name".*
    exit 1
  fi
  rm -rf "${BUNDLES:?}/$name" && mkdir -p "$BUNDLES/$name"
  for k in $(seq 1 "$n"); do cat "/tmp/parts/$name.tar.gz.$k-of-$n"; done | tar xzf - -C "$BUNDLES/$name"
  mapfile -t wheels < <(find "$BUNDLES/$name" -name '*.whl')
  if [ ${#wheels[@]} -gt 0 ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "${wheels[@]}"
  fi
  rm -f /tmp/parts/"$name".*
  touch "$BUNDLES/$name.done"
  echo "$name: assembled in $BUNDLES/$name"
done

# The benchmarks read ../shared, as in a checkout; the base bundle has its layout.
if [ -e "$BUNDLES/base.done" ]; then
  ln -sfn "$BUNDLES/base" ../shared
  mkdir -p "$BUNDLES/llama-3.1-8b-shapes"
  cp "$BUNDLES"/base/models/llama-3.1-8b-config/* "$BUNDLES"/base/models/llama-3.1-tokenizer/* \
      "$BUNDLES/llama-3.1-8b-shapes/"
fi
