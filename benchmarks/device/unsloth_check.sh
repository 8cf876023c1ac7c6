#!/usr/bin/env bash
# On the device, one GPU: does Unsloth load a base and attach LoRA here, and if not, why (the exception and its
# frame, as the trainer's summary records it)? Builds random bf16 weights in the shapes of a config folder
# (default: Qwen2.5-1.5B's, from the base bundle) so no weights travel, then runs training.llm.load_with_lora
# with the qwen-3way recipe. Needs the base and train bundles. Writes $OUT/unsloth_check.json.
set -euo pipefail
bash benchmarks/device/setup_env.sh
source benchmarks/device/env.sh
need base train
CONFIG=${1:-$BUNDLES/base/models/qwen2.5-1.5b-shapes}
python3 - "$CONFIG" "$OUT/unsloth_check.json" <<'PY'
import json
import sys
import time

import unsloth  # noqa: F401  (first, as the trainer imports it)
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from training.llm import load_with_lora
from training.recipes import load_recipe

config_dir, out = sys.argv[1], sys.argv[2]
folder = "/tmp/unsloth_check_base"
config = AutoConfig.from_pretrained(config_dir)
torch.manual_seed(0)
AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16).save_pretrained(folder)
AutoTokenizer.from_pretrained(config_dir).save_pretrained(folder)
start = time.perf_counter()
recipe = load_recipe("qwen-3way")
model, backend, fallback = load_with_lora(folder, recipe, "cuda", torch.bfloat16)
result = {"config": config_dir, "model_type": config.model_type, "backend": backend, "unsloth_fallback": fallback,
          "seconds": round(time.perf_counter() - start, 1), "unsloth": unsloth.__version__, "torch": torch.__version__}
print(json.dumps(result, indent=1))
open(out, "w").write(json.dumps(result, indent=1) + "\n")
PY
