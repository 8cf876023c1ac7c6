"""Do the ONNX Runtime backends score like torch? Accuracy, label agreement and demo flags, per model and backend.

How to run (from the repository root, ../shared beside it for SST-2 dev):
    .venv/bin/python benchmarks/onnx_agreement.py --models default,accurate --out benchmarks/results/onnx_agreement.json

On a CPU with bf16 units torch runs the model in bf16 (``cpu_bf16``); ``--torch-fp32`` compares with torch in fp32.

For each model and each backend (torch, onnx-fp32, onnx-int8), in one process:
1. SST-2 dev (positive/negative) and training/labels/messages_dev.tsv (negative/neutral/positive), scored through
   ``screener.batching.predict_proba`` as the scan scores: accuracy and macro-F1 (``training.evaluate.score``), and
   against torch the share of texts with the same stored label (``runs.class_labels``, threshold 0.5) and the
   largest change of any class probability; and the SMS Spam Collection's ham messages, unlabelled: the share
   called negative.
2. The demo archive scanned with that backend: the flagged users, against torch's.

A precision ships as a model's default CPU path (``onnx_precision`` in its manifest) where it loses at most 0.3
points of accuracy and macro-F1 on both sets and gives the same demo flags. The share of texts with the same label
is reported beside them; which int8 variant to try is chosen beforehand on training texts
(``onnx_int8_variants.py``), so these development sets are only the check.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BACKENDS = ("torch", "onnx-fp32", "onnx-int8")
SETS = {
    "sst2_dev": (ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv", "text", "label", None, None),
    "messages_dev": (ROOT / "training" / "labels" / "messages_dev.tsv", "text", "label", None, None),
}
# Chosen on training texts (onnx_int8_variants.py): the share of labels a variant must keep there.
MIN_AGREEMENT = 0.995
MAX_DROP_POINTS = 0.3


def labels_of(proba: np.ndarray, classes) -> np.ndarray:
    from screener import runs

    return runs.class_labels(*runs.class_columns(proba, classes), 0.5)


def demo_flags(model: str, backend: str) -> list[str]:
    from screener import demo, runs
    from screener.scan import scan
    from screener.settings import Settings
    from screener.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "messages.duckdb"
        demo.write_demo_db(db)
        settings = Settings(model=model, backend=backend)
        with Store(db, settings) as store:
            store.attach_source(runs.resolve_source(db, None, settings))
            newest = store.scalar("source_max_time")
        scan(db, settings, as_of=newest + timedelta(minutes=1), progress=False)
        import duckdb

        con = duckdb.connect(str(db), read_only=True)
        try:
            rows = con.execute("SELECT user_id FROM screener_flags ORDER BY user_id").fetchall()
        finally:
            con.close()
    return [r[0] for r in rows]


def fp32_copy(model: str, into: Path) -> str:
    """The model folder copied with ``"cpu_bf16": false``: torch in fp32 on a CPU with bf16 units too."""
    import shutil

    from screener.classifiers.registry import MANIFEST, resolve_model_dir

    folder = into / resolve_model_dir(model).name
    shutil.copytree(resolve_model_dir(model), folder)
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    manifest["cpu_bf16"] = False
    (folder / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return str(folder)


def measure(model: str, backends=BACKENDS, demo: bool = True, torch_fp32: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        torch_model = fp32_copy(model, Path(tmp)) if torch_fp32 else model
        return measure_with(model, torch_model, backends, demo)


def measure_with(model: str, torch_model: str, backends, demo: bool) -> dict:
    from screener.batching import predict_proba
    from screener.classifiers.registry import load_classifier
    from training.evaluate import read_data, score

    data = {name: read_data(str(path), text, label, pos, neg) for name, (path, text, label, pos, neg) in SETS.items()
            if path.exists()}
    from training.data import SMS_FILE, read_sms

    ham = read_sms(SMS_FILE, ham_only=True) if Path(SMS_FILE).exists() else []
    out: dict = {"model": model, "sets": {name: len(rows.texts) for name, rows in data.items()}, "backends": {}}
    if ham:
        out["sets"]["sms_ham"] = len(ham)
    reference: dict = {}
    for backend in backends:
        start = time.perf_counter()
        folder = torch_model if backend == "torch" else model
        clf = load_classifier(folder, device="cpu", backend=backend)
        entry: dict = {"model_id": clf.model_id, "load_s": round(time.perf_counter() - start, 2)}
        if backend == "torch":
            entry["bf16"] = bool(getattr(clf, "bf16", False))
        for name, rows in data.items():
            start = time.perf_counter()
            proba = predict_proba(clf, list(rows.texts), 64)
            seconds = time.perf_counter() - start
            figures = score(proba, tuple(clf.labels), rows.labels, rows.classes, list(rows.texts))
            result = {key: figures[key] for key in ("accuracy", "macro_f1", "f1") if key in figures}
            result["msgs_per_s"] = round(len(rows.texts) / seconds, 1)
            labels = labels_of(proba, clf.labels)
            if backend == "torch":
                reference[name] = (proba, labels, result)
            else:
                ref_proba, ref_labels, ref_result = reference[name]
                result["same_label"] = float(np.mean(labels == ref_labels))
                result["max_abs_diff"] = float(np.abs(proba - ref_proba).max())
                result["points_vs_torch"] = {key: round(100 * (result[key] - ref_result[key]), 2)
                                             for key in ("accuracy", "macro_f1") if key in result}
            entry[name] = result
        if ham:
            entry["sms_ham"] = score(predict_proba(clf, ham, 64), tuple(clf.labels), None)
        clf.close()
        if demo:
            entry["demo_flags"] = demo_flags(folder, backend)
        if backend != "torch":
            torch_entry = out["backends"]["torch"]
            entry["same_demo_flags"] = entry.get("demo_flags") == torch_entry.get("demo_flags") if demo else None
            entry["ships"] = bool(entry["same_demo_flags"] is not False and all(
                min(entry[name]["points_vs_torch"].values()) >= -MAX_DROP_POINTS for name in data))
        out["backends"][backend] = entry
        print(json.dumps({model: {backend: entry}}, indent=1), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="default,accurate")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--backends", default=",".join(BACKENDS), help="torch first: the others are compared with it")
    parser.add_argument("--no-demo", action="store_true", help="skip the demo scans (slow for a large model)")
    parser.add_argument("--torch-fp32", action="store_true",
                        help="torch in fp32 even on a CPU with bf16 units (where it would run in bf16)")
    args = parser.parse_args()
    out = {"command": " ".join(sys.argv), "criteria": {"max_drop_points": MAX_DROP_POINTS,
                                                       "same_demo_flags": True},
           "models": [measure(m, tuple(args.backends.split(",")), not args.no_demo, args.torch_fp32)
                      for m in args.models.split(",")]}
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
