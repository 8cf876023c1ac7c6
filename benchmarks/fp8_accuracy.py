"""Does the GPU engine's float8 mode keep accuracy? SST-2 dev accuracy and probability differences of one shipped
LLM model under the engine in float32, bfloat16, and bfloat16 with float8 projections.

Float8 rounding does not depend on the device (e4m3 with one scale per weight row and per token), so this runs on
CPU; the speed of float8 is measured on a GPU by ``engine_variants.py --variant fp8=1``. Usage:

    .venv/bin/python benchmarks/fp8_accuracy.py --model smollm2-sst2 --out benchmarks/results/fp8_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    import torch

    from screener.classifiers.gpu.runner import LabelTokenEngine
    from screener.classifiers.llm import load_model_and_tokenizer
    from screener.classifiers.registry import read_manifest, resolve_model_dir
    from screener.prompt import DEFAULT_MAX_TEXT_TOKENS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-sst2")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    lines = args.data.read_text(encoding="utf-8").splitlines()[1:]
    texts = [line.rsplit("\t", 1)[0] for line in lines]
    labels = np.array([int(line.rsplit("\t", 1)[1]) for line in lines])
    folder = resolve_model_dir(args.model)
    manifest = read_manifest(folder)
    runs, probs = [], {}
    for name, dtype, fp8 in (("fp32", torch.float32, False), ("bf16", torch.bfloat16, False),
                             ("bf16+fp8", torch.bfloat16, True)):
        model, tokenizer, label_ids = load_model_and_tokenizer(folder, manifest, "cpu", dtype)
        engine = LabelTokenEngine(model, tokenizer, label_ids, manifest.get("instruction"), fp8=fp8,
                                  max_text_tokens=int(manifest.get("max_text_tokens", DEFAULT_MAX_TEXT_TOKENS)))
        start = time.perf_counter()
        p = engine.predict_negative(texts)
        probs[name] = p
        accuracy = float(((p < 0.5).astype(int) == labels).mean())  # label 1 is positive
        runs.append({"engine": name, "accuracy": round(accuracy, 4), "seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(runs[-1]), flush=True)
    for run in runs[1:]:
        diff = np.abs(probs[run["engine"]] - probs["fp32"])
        run.update({"vs_fp32_max_abs": round(float(diff.max()), 4), "vs_fp32_mean_abs": round(float(diff.mean()), 5),
                    "decision_agreement_with_fp32": round(float(((probs[run["engine"]] < 0.5) ==
                                                                 (probs["fp32"] < 0.5)).mean()), 4)})
    out = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]), "model": args.model,
           "data": str(args.data.name), "n": len(texts), "runs": runs}
    print(json.dumps(out, indent=1))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
