# Sourced by every script here, on the device, from the repository root: its environment and where
# setup_env.sh leaves the bundles.
# The package is not installed there: the tree goes on the path (screener/queries.py finds sql/ beside the package).
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
# NVLink multicast stays off on these hosts (benchmarks/device/README.md).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
BUNDLES=/tmp/bundles
RESULTS=/tmp/results
GGUF=$BUNDLES/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
GPUS=${GPUS:-$(nvidia-smi -L | grep -c '^GPU')}
mkdir -p "$BUNDLES" "$RESULTS" /tmp/parts /tmp/site

need() {  # need NAME... : stop unless these bundles are assembled
  local name
  for name in "$@"; do
    if [ ! -e "$BUNDLES/$name.done" ]; then
      echo "bundle $name is not assembled; pieces staged:" /tmp/parts/"$name".tar.gz.* >&2
      echo "carry the missing .carry/$name-K folders (prepare_carry.sh) in calls made back to back" >&2
      exit 3
    fi
  done
}

smollm2_model() {  # smollm2_model DIR : the shipped smollm2-sst2 folder with its base set to the carried GGUF
  rm -rf "$1" && cp -r screener/models/smollm2-sst2 "$1"
  python3 - "$1/screener_model.json" "$GGUF" <<'EOF'
import json
import sys

manifest = json.load(open(sys.argv[1]))
manifest["base"] = sys.argv[2]
json.dump(manifest, open(sys.argv[1], "w"))
EOF
}
