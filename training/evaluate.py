"""``screener eval``: how well a classifier finds negative messages, on binary or three-way labelled data.

On binary data (SST-2: 1 positive, 0 negative) the figures are negative against not-negative: accuracy,
precision, recall and F1 with negative as the class to find, log loss and calibration of P(negative). A text is
predicted negative when negative is the model's top class; for a two-class model that is P(negative) >= 0.5.
Log loss is binary cross-entropy on P(negative) (the paper's was on hard labels, so the two do not compare).
Calibration is the expected calibration error of P(negative) over ten equal-width confidence bins, with the bins
themselves for a reliability diagram.

On three-way data (negative, neutral, positive, as ``training/labels`` holds them) the figures are accuracy,
macro-F1 (the mean of the three classes' F1), each class's precision and recall, the 3x3 confusion matrix and the
share of truly neutral texts called negative: what a binary model gets most wrong on everyday messages. A
two-class model predicts negative or positive only; its neutral column stays empty.

On unlabelled texts (SMS ham) the figure is the share called negative.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from screener.classifiers.base import BINARY_LABELS, NEGATIVE, NEUTRAL, THREE_WAY_LABELS

# Upper bounds (inclusive) of the text-length buckets, in whitespace-separated words: model-independent, so
# every model in a comparison is bucketed the same way.
LENGTH_BUCKETS = (5, 10, 20, 40)
CALIBRATION_BINS = 10
_EPS = 1e-7
CHUNK = 4096


def length_bucket_label(i: int) -> str:
    lo = 1 if i == 0 else LENGTH_BUCKETS[i - 1] + 1
    return f"{lo}-{LENGTH_BUCKETS[i]} words" if i < len(LENGTH_BUCKETS) else f"{lo}+ words"


def by_length(texts: Sequence[str], correct: np.ndarray) -> list[dict]:
    words = np.array([len(t.split()) for t in texts])
    bucket = np.searchsorted(np.array(LENGTH_BUCKETS), words, side="left")
    return [{"bucket": length_bucket_label(i), "n": int(np.sum(bucket == i)),
             "accuracy": float(np.mean(correct[bucket == i])) if np.any(bucket == i) else None}
            for i in range(len(LENGTH_BUCKETS) + 1)]


def metrics(labels: Sequence[int], p_negative: Sequence[float], texts: Sequence[str] | None = None,
            predicted_negative: Sequence[bool] | None = None) -> dict:
    """All binary figures from SST-2-convention labels (1 positive, 0 negative) and P(negative).

    ``predicted_negative`` is the decision (negative is the top class); by default P(negative) >= 0.5, which is
    the same for a two-class model. Log loss and calibration are those of P(negative) as a forecast of negative.
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.clip(np.asarray(p_negative, dtype=np.float64), 0.0, 1.0)
    if y.shape != p.shape or y.ndim != 1 or len(y) == 0:
        raise ValueError(f"expected equal non-empty 1-d labels and probabilities, got {y.shape} and {p.shape}")
    is_neg = y == 0
    pred_neg = p >= 0.5 if predicted_negative is None else np.asarray(predicted_negative, dtype=bool)
    tp = int(np.sum(pred_neg & is_neg))
    fp = int(np.sum(pred_neg & ~is_neg))
    fn = int(np.sum(~pred_neg & is_neg))
    tn = int(np.sum(~pred_neg & ~is_neg))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    pc = np.clip(p, _EPS, 1 - _EPS)
    log_loss = float(-np.mean(np.where(is_neg, np.log(pc), np.log(1 - pc))))

    forecast_neg = p >= 0.5
    confidence = np.where(forecast_neg, p, 1 - p)
    forecast_right = forecast_neg == is_neg
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    bins, ece = [], 0.0
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, CALIBRATION_BINS - 1)
    for b in range(CALIBRATION_BINS):
        mask = which == b
        count = int(mask.sum())
        if count:
            conf, acc = float(confidence[mask].mean()), float(forecast_right[mask].mean())
            ece += count / len(y) * abs(acc - conf)
        else:
            conf = acc = None
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": count,
                     "mean_confidence": conf, "accuracy": acc})

    correct = pred_neg == is_neg
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
        result["by_length"] = by_length(texts, correct)
    return result


def three_way_metrics(labels: Sequence[int], predicted: Sequence[int], probs: np.ndarray | None = None,
                      texts: Sequence[str] | None = None) -> dict:
    """Figures of three-way predictions; ``labels`` and ``predicted`` index ``THREE_WAY_LABELS``. ``probs``
    (n, 3), from a model with all three classes, adds the multi-class log loss."""
    y = np.asarray(labels, dtype=np.int64)
    pred = np.asarray(predicted, dtype=np.int64)
    k = len(THREE_WAY_LABELS)
    if y.shape != pred.shape or y.ndim != 1 or len(y) == 0:
        raise ValueError(f"expected equal non-empty 1-d labels and predictions, got {y.shape} and {pred.shape}")
    if y.min() < 0 or y.max() >= k or pred.min() < 0 or pred.max() >= k:
        raise ValueError(f"labels and predictions must be class indices 0..{k - 1}")
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    actual, called = cm.sum(axis=1), cm.sum(axis=0)
    per_class = {}
    for c, name in enumerate(THREE_WAY_LABELS):
        tp = int(cm[c, c])
        precision = tp / int(called[c]) if called[c] else 0.0
        recall = tp / int(actual[c]) if actual[c] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(actual[c]),
                           "predicted": int(called[c])}
    neg, neu = THREE_WAY_LABELS.index(NEGATIVE), THREE_WAY_LABELS.index(NEUTRAL)
    result = {
        "n": int(len(y)),
        "classes": list(THREE_WAY_LABELS),
        "accuracy": float(np.trace(cm) / len(y)),
        "macro_f1": float(np.mean([per_class[name]["f1"] for name in THREE_WAY_LABELS])),
        "per_class": per_class,
        # rows: actual class, columns: predicted class, in the order of "labels"
        "confusion_matrix": {"labels": list(THREE_WAY_LABELS), "matrix": cm.tolist()},
        "neutral_called_negative": float(cm[neu, neg] / actual[neu]) if actual[neu] else None,
        "called_negative": float(called[neg] / len(y)),
        "log_loss": None,
    }
    if probs is not None:
        picked = np.clip(np.asarray(probs, dtype=np.float64)[np.arange(len(y)), y], _EPS, 1.0)
        result["log_loss"] = float(-np.mean(np.log(picked)))
    if texts is not None:
        result["by_length"] = by_length(texts, y == pred)
    return result


def negative_decisions(probs: np.ndarray, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(P(negative), predicted negative) from a model's probabilities over its ``classes``: negative is
    predicted where it is the top class (for two classes, where P(negative) >= 0.5)."""
    probs = np.asarray(probs, dtype=np.float64)
    neg = list(classes).index(NEGATIVE)
    p_negative = probs[:, neg]
    if len(classes) == 2:
        return p_negative, p_negative >= 0.5
    return p_negative, np.argmax(probs, axis=1) == neg


def three_way_predictions(probs: np.ndarray, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """(each text's top class as an index of ``THREE_WAY_LABELS``, the (n, 3) probabilities where the model has
    all three classes, else None)."""
    unknown = [c for c in classes if c not in THREE_WAY_LABELS]
    if unknown:
        raise ValueError(f"the model's classes {list(classes)} are not among {', '.join(THREE_WAY_LABELS)}")
    probs = np.asarray(probs, dtype=np.float64)
    index = np.array([THREE_WAY_LABELS.index(c) for c in classes])
    predicted = index[np.argmax(probs, axis=1)]
    if set(classes) != set(THREE_WAY_LABELS):
        return predicted, None
    ordered = np.zeros((len(probs), len(THREE_WAY_LABELS)))
    ordered[:, index] = probs
    return predicted, ordered


def score(probs: np.ndarray, model_classes: Sequence[str], labels: Sequence[int] | None,
          data_classes: Sequence[str] = BINARY_LABELS, texts: Sequence[str] | None = None) -> dict:
    """The figures for a model's probabilities on data: three-way, binary or (``labels`` None) unlabelled."""
    p_negative, predicted_negative = negative_decisions(probs, model_classes)
    if labels is None:
        return {"n": int(len(p_negative)), "called_negative": float(np.mean(predicted_negative))
                if len(p_negative) else None}
    if tuple(data_classes) == THREE_WAY_LABELS:
        predicted, ordered = three_way_predictions(probs, model_classes)
        return three_way_metrics(labels, predicted, ordered, texts)
    if tuple(data_classes) != BINARY_LABELS:
        raise ValueError(f"data classes {list(data_classes)}: expected {BINARY_LABELS} or {THREE_WAY_LABELS}")
    return metrics(labels, p_negative, texts, predicted_negative)


def predict(classifier, texts: Sequence[str], batch_size: int | None = None) -> tuple[np.ndarray, float]:
    """(probabilities over ``classifier.labels``, seconds spent scoring)."""
    texts = list(texts)
    chunk = batch_size or CHUNK
    start = time.perf_counter()
    parts = [np.asarray(classifier.predict_proba(texts[i:i + chunk]), dtype=np.float32)
             for i in range(0, len(texts), chunk)]
    seconds = time.perf_counter() - start
    probs = np.concatenate(parts) if parts else np.empty((0, len(classifier.labels)), dtype=np.float32)
    return probs, seconds


def evaluate_classifier(classifier, texts: Sequence[str], labels: Sequence[int] | None,
                        batch_size: int | None = None, classes: Sequence[str] = BINARY_LABELS) -> dict:
    """Score ``texts`` with a loaded classifier (``labels`` and ``predict_proba``) and compute :func:`score`,
    with throughput. ``labels`` index ``classes``; None for unlabelled texts."""
    texts = list(texts)
    probs, seconds = predict(classifier, texts, batch_size)
    result = score(probs, tuple(classifier.labels), labels, classes, texts)
    result.update({
        "model": getattr(classifier, "name", None), "model_id": getattr(classifier, "model_id", None),
        "model_classes": list(classifier.labels),
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
    lines = [f"model     {result.get('model')}  ({result.get('model_id')})",
             f"data      {result.get('data')}  n={result['n']}"]
    if "macro_f1" in result:
        lines += three_way_report(result)
    elif "accuracy" in result:
        lines += binary_report(result)
    else:
        lines.append(f"called negative  {result['called_negative']:.4f}")
    speed = result.get("msgs_per_s")
    lines.append(f"speed     {speed:.1f} messages/s, {result['seconds']:.2f} s scoring"
                 + (f", {result['load_seconds']:.2f} s loading" if "load_seconds" in result else ""))
    return "\n".join(lines)


def binary_report(result: dict) -> list[str]:
    cm = result["confusion_matrix"]["matrix"]
    lines = [
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
    lines += length_report(result)
    return lines


def three_way_report(result: dict) -> list[str]:
    neutral_neg = result["neutral_called_negative"]
    lines = [
        f"accuracy  {result['accuracy']:.4f}",
        f"macro-F1  {result['macro_f1']:.4f}",
        "neutral called negative  " + ("-" if neutral_neg is None else f"{neutral_neg:.4f}"),
        "class      precision  recall  f1      support",
    ]
    for name, c in result["per_class"].items():
        lines.append(f"  {name:<9}{c['precision']:.4f}     {c['recall']:.4f}  {c['f1']:.4f}  {c['support']}")
    lines.append("confusion (rows actual, columns predicted; " + ", ".join(result["confusion_matrix"]["labels"]) + ")")
    for row in result["confusion_matrix"]["matrix"]:
        lines.append("          [" + ", ".join(f"{v:>6}" for v in row) + "]")
    if result.get("log_loss") is not None:
        lines.append(f"log loss  {result['log_loss']:.4f}  (cross-entropy over the three classes)")
    lines += length_report(result)
    return lines


def length_report(result: dict) -> list[str]:
    lines = ["accuracy by length:"]
    for b in result.get("by_length", []):
        acc = "-" if b["accuracy"] is None else f"{b['accuracy']:.4f}"
        lines.append(f"  {b['bucket']:<12} n={b['n']:<6} {acc}")
    return lines


def evaluate(model: str, data: str, text_col: str = "text", label_col: str = "label", positive=None,
             negative=None, device: str = "auto", batch_size: int | None = None) -> dict:
    """Load ``model`` (shipped name or folder) and evaluate it on a labelled TSV, CSV or Parquet file."""
    from screener.classifiers.registry import load_classifier

    rows = read_data(data, text_col, label_col, positive, negative)
    start = time.perf_counter()
    classifier = load_classifier(model, device=device)
    load_seconds = time.perf_counter() - start
    try:
        result = evaluate_classifier(classifier, rows.texts, rows.labels, batch_size, rows.classes)
    finally:
        classifier.close()
    result.update({"data": str(data), "device": device, "load_seconds": load_seconds})
    return result
