"""``screener eval``: a classifier's accuracy, negative-class precision/recall/F1, log loss and calibration.

The negative class is the one that matters to the engine, so it is the "positive" class of precision, recall
and F1 here. Log loss is binary cross-entropy on the predicted probabilities (the paper's was on hard labels, so
the two do not compare). Calibration is the expected calibration error over ten equal-width confidence bins,
with the bins themselves for a reliability diagram.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

# Upper bounds (inclusive) of the text-length buckets, in whitespace-separated words: model-independent, so
# every model in a comparison is bucketed the same way.
LENGTH_BUCKETS = (5, 10, 20, 40)
CALIBRATION_BINS = 10
_EPS = 1e-7


def length_bucket_label(i: int) -> str:
    lo = 1 if i == 0 else LENGTH_BUCKETS[i - 1] + 1
    return f"{lo}-{LENGTH_BUCKETS[i]} words" if i < len(LENGTH_BUCKETS) else f"{lo}+ words"


def metrics(labels: Sequence[int], p_negative: Sequence[float], texts: Sequence[str] | None = None) -> dict:
    """All quality figures from SST-2-convention labels (1 positive, 0 negative) and P(negative)."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.clip(np.asarray(p_negative, dtype=np.float64), 0.0, 1.0)
    if y.shape != p.shape or y.ndim != 1 or len(y) == 0:
        raise ValueError(f"expected equal non-empty 1-d labels and probabilities, got {y.shape} and {p.shape}")
    is_neg = y == 0
    pred_neg = p >= 0.5
    tp = int(np.sum(pred_neg & is_neg))
    fp = int(np.sum(pred_neg & ~is_neg))
    fn = int(np.sum(~pred_neg & is_neg))
    tn = int(np.sum(~pred_neg & ~is_neg))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    pc = np.clip(p, _EPS, 1 - _EPS)
    log_loss = float(-np.mean(np.where(is_neg, np.log(pc), np.log(1 - pc))))

    confidence = np.where(pred_neg, p, 1 - p)
    correct = pred_neg == is_neg
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    bins, ece = [], 0.0
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, CALIBRATION_BINS - 1)
    for b in range(CALIBRATION_BINS):
        mask = which == b
        count = int(mask.sum())
        if count:
            conf, acc = float(confidence[mask].mean()), float(correct[mask].mean())
            ece += count / len(y) * abs(acc - conf)
        else:
            conf = acc = None
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": count,
                     "mean_confidence": conf, "accuracy": acc})

    result = {
        "n": int(len(y)),
        "accuracy": float(np.mean(correct)),
        "precision": precision, "recall": recall, "f1": f1,
        "confusion_matrix": {
            "labels": ["negative", "positive"],
            # rows: actual class, columns: predicted class, in the order of "labels"
            "matrix": [[tp, fn], [fp, tn]],
            "true_negative_class": tp, "false_negative_class": fp,
            "missed_negative_class": fn, "true_positive_class": tn,
        },
        "log_loss": log_loss,
        "ece": float(ece),
        "reliability": bins,
        "positive_rate_predicted": float(np.mean(~pred_neg)),
    }
    if texts is not None:
        words = np.array([len(t.split()) for t in texts])
        bucket = np.searchsorted(np.array(LENGTH_BUCKETS), words, side="left")
        result["by_length"] = [
            {"bucket": length_bucket_label(i), "n": int(np.sum(bucket == i)),
             "accuracy": float(np.mean(correct[bucket == i])) if np.any(bucket == i) else None}
            for i in range(len(LENGTH_BUCKETS) + 1)
        ]
    return result


def evaluate_classifier(classifier, texts: Sequence[str], labels: Sequence[int],
                        batch_size: int | None = None) -> dict:
    """Score ``texts`` with a loaded classifier and compute :func:`metrics`, with throughput."""
    texts = list(texts)
    chunk = batch_size or 4096
    start = time.perf_counter()
    parts = [np.asarray(classifier.predict_negative(texts[i:i + chunk]), dtype=np.float32)
             for i in range(0, len(texts), chunk)]
    seconds = time.perf_counter() - start
    p = np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)
    result = metrics(labels, p, texts)
    result.update({
        "model": getattr(classifier, "name", None), "model_id": getattr(classifier, "model_id", None),
        "seconds": seconds, "msgs_per_s": len(texts) / seconds if seconds > 0 else None,
    })
    return result


def read_data(data: str, text_col: str, label_col: str, positive, negative):
    """``training.data.read_labelled`` with its file and format errors as InputError (exit code 3)."""
    from screener.errors import InputError
    from training.data import read_labelled

    try:
        return read_labelled(data, text_col, label_col, positive, negative)
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(f"cannot use {data} as labelled data: {exc}") from exc


def format_report(result: dict) -> str:
    """A plain-text summary of an :func:`evaluate` result for a terminal."""
    cm = result["confusion_matrix"]["matrix"]
    lines = [
        f"model     {result.get('model')}  ({result.get('model_id')})",
        f"data      {result.get('data')}  n={result['n']}",
        f"accuracy  {result['accuracy']:.4f}",
        f"negative class: precision {result['precision']:.4f}  recall {result['recall']:.4f}  f1 {result['f1']:.4f}",
        f"log loss  {result['log_loss']:.4f}  (binary cross-entropy on P(negative))",
        f"ECE       {result['ece']:.4f}  ({len(result['reliability'])} confidence bins)",
        "confusion (rows actual, columns predicted; negative first)",
        f"          [[{cm[0][0]:>6}, {cm[0][1]:>6}],",
        f"           [{cm[1][0]:>6}, {cm[1][1]:>6}]]",
        "reliability: bin  count  confidence  accuracy",
    ]
    for b in result["reliability"]:
        if b["count"]:
            lines.append(f"  {b['lo']:.1f}-{b['hi']:.1f}  {b['count']:>6}  {b['mean_confidence']:.3f}      "
                         f"{b['accuracy']:.3f}")
    lines.append("accuracy by length:")
    for b in result.get("by_length", []):
        acc = "-" if b["accuracy"] is None else f"{b['accuracy']:.4f}"
        lines.append(f"  {b['bucket']:<12} n={b['n']:<6} {acc}")
    speed = result.get("msgs_per_s")
    lines.append(f"speed     {speed:.1f} messages/s, {result['seconds']:.2f} s scoring"
                 + (f", {result['load_seconds']:.2f} s loading" if "load_seconds" in result else ""))
    return "\n".join(lines)


def evaluate(model: str, data: str, text_col: str = "text", label_col: str = "label", positive=None,
             negative=None, device: str = "auto", batch_size: int | None = None) -> dict:
    """Load ``model`` (shipped name or folder) and evaluate it on a labelled TSV, CSV or Parquet file."""
    from screener.classifiers.registry import load_classifier

    rows = read_data(data, text_col, label_col, positive, negative)
    start = time.perf_counter()
    classifier = load_classifier(model, device=device)
    load_seconds = time.perf_counter() - start
    result = evaluate_classifier(classifier, rows.texts, rows.labels, batch_size)
    result.update({"data": str(data), "device": device, "load_seconds": load_seconds})
    return result
