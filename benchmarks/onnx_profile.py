"""Where an ONNX backend's time goes, by operator: ONNX Runtime's own profiler over SST-2 dev.

How to run (from the repository root, ../shared beside it for SST-2 dev):
    .venv/bin/python benchmarks/onnx_profile.py --model default --backend onnx-int8 \
        --out benchmarks/results/onnx_profile_int8.json

The model's cached export runs in one session of one thread (what each of the scan's threads runs) over SST-2 dev,
sorted by token length in batches of 32 texts, as the scan cuts its batches of 64 into one part per core.
Reported: each operator type's share of the kernel time, and the shares of the weight products in int8
(``DynamicQuantizeMatMul``, ``MatMulIntegerToFloat``) and of the products left in fp32 (``MatMul``: the feed-forward
down projections and the attention's own products; ``FusedMatMul``: attention scores).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--backend", default="onnx-int8", choices=["onnx-fp32", "onnx-int8"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import onnxruntime as ort

    from screener.classifiers import hf, onnx
    from screener.classifiers.registry import load_classifier, read_manifest, resolve_model_dir

    clf = load_classifier(args.model, device="cpu", backend=args.backend)
    folder = resolve_model_dir(args.model)
    manifest = read_manifest(folder)
    entry, _ = onnx.cached_entry(folder, manifest, hf.manifest_model_id(folder, manifest),
                                 args.backend.removeprefix("onnx-"))
    dev = ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv"
    texts = [line.split("\t")[0] for line in dev.read_text(encoding="utf-8").splitlines()[1:]]
    ids = sorted(clf.encode(texts), key=len)
    feeds = [dict(zip(onnx.INPUTS, onnx.pad_arrays(ids[i:i + 32], clf.pad_id))) for i in range(0, len(ids), 32)]
    clf.close()
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "profile")
        options.log_severity_level = 3
        session = ort.InferenceSession(str(entry / onnx.MODEL_FILE), options, providers=["CPUExecutionProvider"])
        for feed in feeds:
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    micros: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            micros[event["args"]["op_name"]] += event["dur"]
    total = sum(micros.values())
    shares = {op: round(us / total, 4) for op, us in micros.most_common()}
    out = {"model": args.model, "backend": args.backend, "command": " ".join(sys.argv), "texts": len(texts),
           "kernel_ms": round(total / 1e3, 1), "shares": shares,
           "int8_products": round(sum(shares.get(op, 0) for op in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                                                                   "MatMulInteger")), 4),
           "fp32_products": round(sum(shares.get(op, 0) for op in ("MatMul", "FusedMatMul")), 4),
           "layer_norm_and_gelu": round(sum(shares.get(op, 0) for op in ("SkipLayerNormalization", "BiasGelu",
                                                                         "LayerNormalization")), 4)}
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
