"""Which int8 variant of the ONNX export could ship? Label agreement with fp32 ONNX, variant by variant.

How to run (from the repository root, ../shared beside it for SST-2):
    .venv/bin/python benchmarks/onnx_int8_variants.py --model default --out benchmarks/results/onnx_int8_variants.json

Each variant is ``onnxruntime.quantization.quantize_dynamic`` (int8 weights per output channel, activations
quantized per call) of the model's cached fp32 export, over a subset of its weight matrix products:

- one kind alone: the query, key and value projections (``qkv``), the attention output (``attention_output``), the
  feed-forward up projection (``ffn_up``) or down projection (``ffn_down``);
- the shipped ``onnx-int8`` recipe (every kind but ``ffn_down``), and with 7-bit weights (``reduce_range``, which
  keeps AVX2's int8 dot products from saturating) or unsigned weights;
- every weight product.

Selection figures, to choose with: the share of texts whose stored label (``runs.class_labels``) matches fp32's,
on SST-2 training sentences and training messages (``training/labels/messages_train.tsv``), a fixed sample of
each. Reported beside them, never chosen on: the same on SST-2 dev and ``training/labels/messages_dev.tsv``, with
the accuracy points against fp32. A variant could ship where it keeps 99.5% of labels and 0.3 points on both
development sets (``onnx_agreement.py`` then checks the demo flags).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = ("qkv", "attention_output", "ffn_up", "ffn_down")
VARIANTS = {
    "qkv": {"kinds": ["qkv"]},
    "attention_output": {"kinds": ["attention_output"]},
    "ffn_up": {"kinds": ["ffn_up"]},
    "ffn_down": {"kinds": ["ffn_down"]},
    "shipped_recipe": {"kinds": ["qkv", "attention_output", "ffn_up"]},
    "shipped_recipe_reduce_range": {"kinds": ["qkv", "attention_output", "ffn_up"], "reduce_range": True},
    "shipped_recipe_uint8_weights": {"kinds": ["qkv", "attention_output", "ffn_up"], "uint8": True},
    "all": {"kinds": list(KINDS)},
}
SELECTION_SIZES = {"sst2_train": 1500, "messages_train": 1000}


def selection_texts() -> dict[str, list[str]]:
    rng = np.random.default_rng(99)
    sst2 = [line.split("\t")[0] for line in
            (ROOT.parent / "shared" / "data" / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    with open(ROOT / "training" / "labels" / "messages_train.tsv", encoding="utf-8") as f:
        messages = [row["text"] for row in csv.DictReader(f, delimiter="\t")]
    return {name: [texts[i] for i in rng.choice(len(texts), SELECTION_SIZES[name], replace=False)]
            for name, texts in (("sst2_train", sst2), ("messages_train", messages))}


def matmul_kinds(graph) -> dict[str, list[str]]:
    """The weight matrix products of an exported encoder by kind, from the graph's structure: the down projection
    reads a GELU, the up projection writes the down projection's input width, the attention output reads the
    reshaped attention context; the rest are the query, key and value projections."""
    from screener.classifiers import onnx

    weights = {init.name: tuple(init.dims) for init in graph.graph.initializer}
    producers = {out: node for node in graph.graph.node for out in node.output}
    down = set(onnx.fp32_matmuls(graph))
    products = [node for node in graph.graph.node if node.op_type == "MatMul" and any(i in weights for i in node.input)]
    inner = {weights[next(i for i in node.input if i in weights)][0] for node in products if node.name in down}
    kinds: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for node in products:
        weight = weights[next(i for i in node.input if i in weights)]
        source = producers.get(next(i for i in node.input if i not in weights))
        if node.name in down:
            kinds["ffn_down"].append(node.name)
        elif weight[1] in inner:
            kinds["ffn_up"].append(node.name)
        elif source is not None and source.op_type in ("Reshape", "Transpose"):
            kinds["attention_output"].append(node.name)
        else:
            kinds["qkv"].append(node.name)
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import onnx as onnx_lib
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import onnx_agreement
    from screener.batching import predict_proba
    from screener.classifiers import hf, onnx
    from screener.classifiers.registry import load_classifier, read_manifest, resolve_model_dir
    from training.evaluate import read_data, score

    fp32 = load_classifier(args.model, device="cpu", backend="onnx-fp32")
    folder = resolve_model_dir(args.model)
    manifest = read_manifest(folder)
    source, _ = onnx.cached_entry(folder, manifest, hf.manifest_model_id(folder, manifest), onnx.FP32)
    graph = onnx_lib.load(str(source / onnx.MODEL_FILE))
    kinds = matmul_kinds(graph)
    every = [name for names in kinds.values() for name in names]
    selection = selection_texts()
    dev = {name: read_data(str(path), text, label, pos, neg)
           for name, (path, text, label, pos, neg) in onnx_agreement.SETS.items() if path.exists()}

    def run(clf) -> dict:
        return {**{name: predict_proba(clf, texts, 64) for name, texts in selection.items()},
                **{name: predict_proba(clf, list(rows.texts), 64) for name, rows in dev.items()}}

    reference = run(fp32)
    out = {"model": args.model, "model_id": fp32.model_id, "command": " ".join(sys.argv),
           "matmuls": {kind: len(names) for kind, names in kinds.items()},
           "selection": {name: len(texts) for name, texts in selection.items()}, "variants": {}}
    previous = logging.root.manager.disable
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants.split(","):
            spec = VARIANTS[name]
            target = Path(tmp) / f"{name}.onnx"
            include = {node for kind in spec["kinds"] for node in kinds[kind]}
            logging.disable(logging.WARNING)
            try:
                quantize_dynamic(str(source / onnx.MODEL_FILE), str(target),
                                 weight_type=QuantType.QUInt8 if spec.get("uint8") else QuantType.QInt8,
                                 per_channel=True, reduce_range=bool(spec.get("reduce_range")),
                                 op_types_to_quantize=["MatMul"],
                                 nodes_to_exclude=[node for node in every if node not in include])
            finally:
                logging.disable(previous)
            clf = onnx.OnnxClassifier(onnx.session(target), fp32.tokenizer, name=name, model_id=name,
                                      precision=onnx.INT8, max_length=fp32.max_length, max_chars=fp32.max_chars,
                                      pad_id=fp32.pad_id, labels=fp32.labels, threads=fp32.threads)
            got = run(clf)
            clf.close()
            entry: dict = {"kinds": spec["kinds"], "reduce_range": bool(spec.get("reduce_range")),
                           "weights": "uint8" if spec.get("uint8") else "int8"}
            for set_name, proba in got.items():
                same = onnx_agreement.labels_of(proba, fp32.labels) == onnx_agreement.labels_of(
                    reference[set_name], fp32.labels)
                figures = {"same_label": round(float(np.mean(same)), 4),
                           "mean_abs_diff": round(float(np.abs(proba - reference[set_name]).mean()), 5)}
                if set_name in dev:
                    rows = dev[set_name]
                    mine = score(proba, fp32.labels, rows.labels, rows.classes, list(rows.texts))
                    base = score(reference[set_name], fp32.labels, rows.labels, rows.classes, list(rows.texts))
                    figures["points_vs_fp32"] = {key: round(100 * (mine[key] - base[key]), 2)
                                                 for key in ("accuracy", "macro_f1") if key in mine}
                entry[set_name] = figures
            entry["could_ship"] = all(
                entry[set_name]["same_label"] >= onnx_agreement.MIN_AGREEMENT for set_name in got) and all(
                min(entry[set_name]["points_vs_fp32"].values()) >= -onnx_agreement.MAX_DROP_POINTS for set_name in dev)
            out["variants"][name] = entry
            print(json.dumps({name: entry}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
