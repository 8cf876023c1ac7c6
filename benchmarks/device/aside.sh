#!/usr/bin/env bash
# Here, before and after a stretch that moves a large base (the qwen bundle): `aside.sh out` moves the tree's
# largest files that the device runs do not read (the shipped adapters, the v1 results fixture, the SmolLM2
# teacher file) into .carry/aside/, so each call carries about 80 MB more of a bundle (the tree is then about 2 MB); `aside.sh in` puts them
# back. The files stay tracked: `git status` shows them deleted while they are aside. KEEP (space separated paths)
# leaves some in place, e.g. KEEP=screener/models/smollm2-sst2/adapter/adapter_model.safetensors for
# gpu_scan_variants.sh's float8 agreement.
set -euo pipefail
FILES=(screener/models/default/adapter/adapter_model.safetensors
       screener/models/qwen-3way/adapter/adapter_model.safetensors
       screener/models/accurate/adapter/adapter_model.safetensors
       screener/models/smollm2-sst2/adapter/adapter_model.safetensors
       tests/fixtures/v1_results.duckdb
       training/teacher/smollm2_full_sst2_train.parquet)
case "${1:-}" in
  out) for f in "${FILES[@]}"; do
         [ -e "$f" ] || continue
         [[ " ${KEEP:-} " == *" $f "* ]] && continue
         mkdir -p ".carry/aside/$(dirname "$f")" && mv "$f" ".carry/aside/$f"
       done ;;
  in)  for f in "${FILES[@]}"; do
         [ -e ".carry/aside/$f" ] && mv ".carry/aside/$f" "$f"
       done
       git diff --quiet --stat -- "${FILES[@]}" || { echo "aside files differ from git" >&2; exit 1; } ;;
  *)   echo "usage: $0 out|in" >&2; exit 2 ;;
esac
