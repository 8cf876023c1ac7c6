"""Which int8 variant of the ONNX export could ship? Label agreement with fp32 ONNX, variant by variant.

How to run (from the repository root, ../shared beside it for SST-2):
    .venv/bin/python benchmarks/onnx_int8_variants.py --model default --out benchmarks/results/onnx_int8_variants.json

Each variant is ``onnxruntime.quantization.quantize_dynamic`` (int8 weights per output channel, activations
quantized per call) of the model's cached fp32 export, over a subset of its weight matrix products:

- one kind alone: the query, key and value projections (``qkv``), the attention output (``attention_output``), the
  feed-forward up projection (``ffn_up``) or down projection (``ffn_down``);
- the int8 recipe (every kind but ``ffn_down``, ``recipe``), and with 7-bit weights (``reduce_range``, which
  keeps AVX2's int8 dot products from saturating) or unsigned weights;
- every weight product (``all``);
- the recipe and every weight product after SmoothQuant at an alpha each (``smooth_a*``, ``smooth_all_a*``);
- the recipe smoothed at alpha 0.85 with the down projections of some layers in int8 as well
  (``smooth_a85_down<layers>``), smoothed at their own alpha (``..._a75`` to ``..._a100``), and with 7-bit or
  unsigned weights there (``..._reduce_range``, ``..._uint8``: a second quantization pass over the down projections
  alone).

Selection figures, to choose with: on fixed samples of SST-2 training sentences and training messages
(``training/labels/messages_train.tsv``), none of them a calibration text, the share of texts whose stored label
(``runs.class_labels``) matches fp32's and the accuracy points against fp32. Reported beside them, never chosen on:
the same on SST-2 dev and ``training/labels/messages_dev.tsv``. A variant could ship where it keeps 99.5% of the
labels on both training samples and loses at most 0.3 points on both development sets (``onnx_agreement.py`` then
checks the demo flags against torch); among those, the fastest over the training-message sample, timed at the end
of the run in interleaved rounds with the fp32 export (``speed``). The accuracy bounds are what int8 must keep;
within them, speed is what it is for.

The smoothed variants (``screener.classifiers.onnx_int8``) take their calibration texts from the model folder's
``onnx_calibration`` file (``training/calibration.py`` writes it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from screener.classifiers import onnx_int8  # noqa: E402

VARIANTS = {
    "qkv": {"kinds": ["qkv"]},
    "attention_output": {"kinds": ["attention_output"]},
    "ffn_up": {"kinds": ["ffn_up"]},
    "ffn_down": {"kinds": ["ffn_down"]},
    "recipe": {"kinds": list(onnx_int8.QUANTIZED_KINDS)},
    "recipe_reduce_range": {"kinds": list(onnx_int8.QUANTIZED_KINDS), "reduce_range": True},
    "recipe_uint8_weights": {"kinds": list(onnx_int8.QUANTIZED_KINDS), "uint8": True},
    "all": {"kinds": list(onnx_int8.KINDS)},
    **{f"smooth_a{round(100 * alpha)}": {"kinds": list(onnx_int8.QUANTIZED_KINDS), "smooth": alpha}
       for alpha in (0.5, 0.75, 0.85, 0.95)},
    **{f"smooth_all_a{round(100 * alpha)}": {"kinds": list(onnx_int8.KINDS), "smooth": alpha} for alpha in (0.5, 0.85)},
    **{f"smooth_a85_down{''.join(map(str, layers))}": {"kinds": list(onnx_int8.QUANTIZED_KINDS), "smooth": 0.85,
                                                        "down_layers": layers}
       for layers in ((0,), (0, 1), (0, 1, 2), (0, 1, 2, 3), (3, 4, 5), (5,))},
    **{f"smooth_a85_down_a{round(100 * alpha)}": {"kinds": list(onnx_int8.QUANTIZED_KINDS), "smooth": 0.85,
                                                  "down_layers": tuple(range(6)), "down_smooth": alpha}
       for alpha in (0.95, 1.0)},
    "smooth_a85_down345_a95": {"kinds": list(onnx_int8.QUANTIZED_KINDS), "smooth": 0.85, "down_layers": (3, 4, 5),
                               "down_smooth": 0.95},
    **{f"smooth_a85_down_a{round(100 * alpha)}": {"kinds": list(onnx_int8.QUANTIZED_KINDS), "smooth": 0.85,
                                                  "down_layers": tuple(range(6)), "down_smooth": alpha}
       for alpha in (0.75, 0.9)},
    **{f"smooth_a85_down_a95_{weights}": {"kinds": list(onnx_int8.QUANTIZED_KINDS), "smooth": 0.85,
                                          "down_layers": tuple(range(6)), "down_smooth": 0.95, "down_weights": weights}
       for weights in ("reduce_range", "uint8")},
}
RULE = ("keeps 99.5% of fp32's labels on both training samples and loses at most 0.3 points on both development "
        "sets; among those, the fastest on the training messages")
SPEED_ROUNDS = 5
SELECTION_SIZES = {"sst2_train": 3000, "messages_train": 2500}


def selection_sets(calibration: set[str]) -> dict:
    """Fixed samples of the labelled training texts, none of them a calibration text."""
    from training import data

    rng = np.random.default_rng(99)
    out = {}
    for name, rows in (("sst2_train", data.load_sst2("train", ROOT.parent / "shared" / "data" / "sst2")),
                       ("messages_train", data.load_three_way(ROOT / "training" / "labels" / "messages_train.tsv"))):
        # The calibration file holds each text with its whitespace collapsed (training/calibration.py).
        keep = [i for i, text in enumerate(rows.texts) if " ".join(text.split()) not in calibration]
        out[name] = rows.take(sorted(int(keep[i]) for i in rng.choice(len(keep), SELECTION_SIZES[name],
                                                                       replace=False)))
    return out


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
    source, fp32_entry = onnx.cached_entry(folder, manifest, hf.manifest_model_id(folder, manifest), onnx.FP32)
    graph = onnx_lib.load(str(source / onnx.MODEL_FILE))
    kinds = onnx_int8.matmul_kinds(graph)
    every = [name for names in kinds.values() for name in names]
    calibration_file = folder / manifest["onnx_calibration"]
    calibration_texts = [line for line in calibration_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    selection = selection_sets(set(calibration_texts))
    dev = {name: read_data(str(path), text, label, pos, neg)
           for name, (path, text, label, pos, neg) in onnx_agreement.SETS.items() if path.exists()}
    labelled = {**selection, **dev}

    def run(clf) -> dict:
        return {name: predict_proba(clf, list(rows.texts), 64) for name, rows in labelled.items()}

    speed_texts = list(selection["messages_train"].texts)

    def speeds(classifiers: dict) -> dict:
        """Messages a second over the training-message sample, each classifier in turn, ``SPEED_ROUNDS`` rounds
        (a machine's load then weighs on them alike): the median of each."""
        seconds: dict[str, list[float]] = {name: [] for name in classifiers}
        for _ in range(SPEED_ROUNDS):
            for name, clf in classifiers.items():
                start = time.perf_counter()
                predict_proba(clf, speed_texts, 64)
                seconds[name].append(time.perf_counter() - start)
        return {name: round(len(speed_texts) / float(np.median(times)), 1) for name, times in seconds.items()}

    reference = run(fp32)
    calibration = onnx.calibration_feeds(calibration_file, source / onnx.TOKENIZER_FILE, fp32_entry["text"])
    out = {"model": args.model, "model_id": fp32.model_id, "command": " ".join(sys.argv),
           "matmuls": {kind: len(names) for kind, names in kinds.items()},
           "selection": {name: len(rows) for name, rows in selection.items()},
           "calibration": {"file": str(calibration_file.relative_to(ROOT)) if calibration_file.is_relative_to(ROOT)
                           else str(calibration_file), "texts": len(calibration_texts)}, "variants": {}}
    previous = logging.root.manager.disable
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants.split(","):
            spec = VARIANTS[name]
            target = Path(tmp) / f"{name}.onnx"
            include = {node for kind in spec["kinds"] for node in kinds[kind]}
            include |= {kinds["ffn_down"][layer] for layer in spec.get("down_layers", ())}
            model = onnx_lib.load(str(source / onnx.MODEL_FILE))
            logging.disable(logging.WARNING)
            try:
                down = {kinds["ffn_down"][layer] for layer in spec.get("down_layers", ())}
                if spec.get("smooth"):
                    smoothed_apart = down if spec.get("down_smooth") else set()
                    onnx_int8.smooth(model, sorted(include - smoothed_apart), spec["smooth"], calibration)
                if spec.get("down_smooth"):
                    onnx_int8.smooth(model, sorted(down), spec["down_smooth"], calibration)
                if spec.get("down_weights"):
                    staged = Path(tmp) / f"{name}.down.onnx"
                    quantize_dynamic(model, str(staged),
                                     weight_type=QuantType.QUInt8 if spec["down_weights"] == "uint8" else QuantType.QInt8,
                                     per_channel=True, reduce_range=spec["down_weights"] == "reduce_range",
                                     op_types_to_quantize=["MatMul"],
                                     nodes_to_exclude=[node for node in every if node not in down])
                    model = onnx_lib.load(str(staged))
                    include -= down
                quantize_dynamic(model, str(target),
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
                rows = labelled[set_name]
                mine = score(proba, fp32.labels, rows.labels, rows.classes, list(rows.texts))
                base = score(reference[set_name], fp32.labels, rows.labels, rows.classes, list(rows.texts))
                figures["points_vs_fp32"] = {key: round(100 * (mine[key] - base[key]), 2)
                                             for key in ("accuracy", "macro_f1") if key in mine}
                entry[set_name] = figures
            entry["smoothing_alpha"] = spec.get("smooth")
            entry["ffn_down_layers"] = list(spec.get("down_layers", ()))
            if spec.get("down_weights"):
                entry["ffn_down_weights"] = spec["down_weights"]
            entry["could_ship"] = all(
                entry[set_name]["same_label"] >= onnx_agreement.MIN_AGREEMENT for set_name in selection) and all(
                min(entry[set_name]["points_vs_fp32"].values()) >= -onnx_agreement.MAX_DROP_POINTS for set_name in dev)
            out["variants"][name] = entry
            print(json.dumps({name: entry}), flush=True)
        passing = [name for name, entry in out["variants"].items() if entry["could_ship"]]
        timed = {"fp32": fp32, **{name: onnx.OnnxClassifier(
            onnx.session(Path(tmp) / f"{name}.onnx"), fp32.tokenizer, name=name, model_id=name, precision=onnx.INT8,
            max_length=fp32.max_length, max_chars=fp32.max_chars, pad_id=fp32.pad_id, labels=fp32.labels,
            threads=fp32.threads) for name in passing}}
        measured = speeds(timed)
        for name in passing:
            timed[name].close()
        out["speed"] = {"texts": "messages_train", "rounds": SPEED_ROUNDS, "threads": fp32.threads,
                        "texts_per_s": measured,
                        "vs_fp32": {name: round(value / measured["fp32"], 3) for name, value in measured.items()}}
    out["chosen"] = {"variant": max(passing, key=measured.get) if passing else None, "passing": passing,
                     "rule": RULE}
    print(json.dumps({"speed": out["speed"], "chosen": out["chosen"]}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
