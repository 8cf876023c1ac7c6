"""Several models over the same evaluation sets in one run: tables (Markdown) and an HTML page with plots.

By default every shipped model and both lexicon baselines run over SST-2 dev (binary figures), the three-way
development messages (``training/labels/messages_dev.tsv``: macro-F1 and the share of neutral called negative)
and the SMS Spam Collection's ham (the share called negative; everyday messages that should mostly not be).

Lexicon baselines sit beside the fine-tuned models: ``vader`` (vaderSentiment's compound score) and ``textblob``
(TextBlob's pattern-lexicon polarity). Both ship their lexicons in their PyPI packages and need no network.
Their scores in [-1, 1] map to P(negative) = (1 - score) / 2, so a neutral text sits at 0.5.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from screener import output
from screener.classifiers.base import BINARY_LABELS, ClassifierBase, binary_proba
from training.evaluate import evaluate_classifier

BASELINES = ("vader", "textblob")


class LexiconBaseline(ClassifierBase):
    """A lexicon scorer's polarity in [-1, 1] as the probabilities of (negative, positive)."""

    labels = BINARY_LABELS

    def polarity(self, texts: Sequence[str]) -> list[float]:
        raise NotImplementedError

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        p_negative = ((1.0 - np.asarray(self.polarity(texts), dtype=np.float32)) / 2.0).astype(np.float32)
        return binary_proba(p_negative)

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]


class VaderBaseline(LexiconBaseline):
    name = "vader"

    def __init__(self):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()
        self.model_id = "lexicon-vader-" + hashlib.sha256(repr(sorted(self.analyzer.lexicon.items())).encode()
                                                          ).hexdigest()[:8]

    def polarity(self, texts: Sequence[str]) -> list[float]:
        return [self.analyzer.polarity_scores(t)["compound"] for t in texts]


class TextBlobBaseline(LexiconBaseline):
    name = "textblob"

    def __init__(self):
        from importlib.metadata import version

        from textblob.en.sentiments import PatternAnalyzer

        self.analyzer = PatternAnalyzer()
        self.model_id = f"lexicon-textblob-{version('textblob')}"

    def polarity(self, texts: Sequence[str]) -> list[float]:
        return [self.analyzer.analyze(t).polarity for t in texts]


def load_any(model: str, device: str):
    if model == "vader":
        return VaderBaseline()
    if model == "textblob":
        return TextBlobBaseline()
    from screener.classifiers.registry import load_classifier

    return load_classifier(model, device=device)


def read_sets(data: Sequence[str], text_col: str, label_col: str, positive, negative) -> list:
    """The evaluation sets, with their file and format errors as InputError (exit code 3)."""
    from screener.errors import InputError
    from training.data import read_eval_set

    sets = []
    for path in data:
        try:
            sets.append(read_eval_set(path, text_col, label_col, positive, negative))
        except (FileNotFoundError, ValueError) as exc:
            raise InputError(f"cannot use {path} as evaluation data: {exc}") from exc
    return sets


def set_kind(eval_set) -> str:
    if eval_set.labels is None:
        return "unlabelled"
    return "three-way" if len(eval_set.classes) == 3 else "binary"


def compare(models: Sequence[str], data: str | Sequence[str] | None, out_md: str, out_html: str,
            text_col: str = "text", label_col: str = "label", positive=None, negative=None, device: str = "auto",
            baselines: bool = True, batch_size: int | None = None, title: str | None = None) -> list[dict]:
    """Evaluate every model (every shipped one when ``models`` is empty; plus the lexicon baselines unless
    ``baselines=False``) on every file of ``data`` (by default ``training.data.default_eval_sets``); write both
    files. Each model is loaded once and closed after its sets.

    Returns one evaluation dict per model and set (see ``training.evaluate.score``), with ``label`` (the model),
    ``dataset``, ``kind`` (binary, three-way or unlabelled), ``data`` and ``load_seconds``.
    """
    from screener.errors import InputError
    from training.data import default_eval_sets

    if data is None or isinstance(data, (str, Path)):
        paths = [str(p) for p in default_eval_sets()] if data is None else [str(data)]
    else:
        paths = [str(p) for p in data] or [str(p) for p in default_eval_sets()]
    if not paths:
        raise InputError("no evaluation data: pass --data FILE (SST-2 dev, messages_dev.tsv and the SMS "
                         "collection are the defaults where ../shared is beside the checkout)")
    protected = output.data_files(*paths)
    for out in (out_md, out_html):
        output.check_target(out, protected)
    sets = read_sets(paths, text_col, label_col, positive, negative)
    models = list(models) or default_models(device)
    names = models + [b for b in BASELINES if baselines and b not in models]
    results = []
    for name in names:
        start = time.perf_counter()
        classifier = load_any(name, device)
        load_seconds = time.perf_counter() - start
        try:
            for eval_set in sets:
                result = evaluate_classifier(classifier, eval_set.texts, eval_set.labels, batch_size,
                                             eval_set.classes)
                result.update({"label": name, "dataset": eval_set.name, "kind": set_kind(eval_set),
                               "data": eval_set.path, "load_seconds": load_seconds})
                results.append(result)
        finally:
            classifier.close()
    title = title or ("Sentiment classifiers on " + ", ".join(s.name for s in sets))
    output.write_file(out_md, render_markdown(results, title).encode("utf-8"), protected, mode=output.SHARED)
    output.write_file(out_html, render_html(results, title).encode("utf-8"), protected, mode=output.SHARED)
    return results


def default_models(device: str) -> list[str]:
    """Every shipped model, less those whose manifest says ``prefers_gpu`` when the run is on a CPU (a 1.5B model
    scores about a message a second there: name it with ``--model`` to include it anyway)."""
    from screener.classifiers.device import resolve_device
    from screener.classifiers.registry import read_manifest, shipped_model_names, shipped_models_dir

    names = shipped_model_names()
    if resolve_device(device) != "cpu":
        return names
    kept = [n for n in names if not read_manifest(shipped_models_dir() / n).get("prefers_gpu")]
    left = [n for n in names if n not in kept]
    if left:
        print(f"compare: on a CPU, leaving out {', '.join(left)} (GPU models); name them with --model to include "
              "them", file=sys.stderr)
    return kept


def _fmt(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def sections(results: list[dict]) -> list[tuple[str, str, list[dict]]]:
    """(dataset, kind, its results) in the order the sets were given."""
    order: dict[str, tuple[str, list[dict]]] = {}
    for r in results:
        order.setdefault(r["dataset"], (r["kind"], []))[1].append(r)
    return [(name, kind, rows) for name, (kind, rows) in order.items()]


def headline(r: dict) -> list[tuple[str, str]]:
    """The one or two figures of a result that the summary table shows."""
    if r["kind"] == "binary":
        return [("accuracy", _fmt(r["accuracy"])), ("F1 (neg)", _fmt(r["f1"]))]
    if r["kind"] == "three-way":
        return [("macro-F1", _fmt(r["macro_f1"])), ("neutral called neg", _fmt(r["neutral_called_negative"]))]
    return [("called neg", _fmt(r["called_negative"]))]


def summary_rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, one row per model) of every set's headline figures."""
    groups = sections(results)
    header = ["Model"] + [f"{name}: {label}" for name, _, rows in groups for label, _ in headline(rows[0])]
    models = list(dict.fromkeys(r["label"] for r in results))
    by = {(r["label"], r["dataset"]): r for r in results}
    table = []
    for model in models:
        row = [str(model)]
        for name, _, rows in groups:
            r = by.get((model, name))
            row += [v for _, v in headline(r)] if r else ["-"] * len(headline(rows[0]))
        table.append(row)
    return header, table


def binary_cells(r: dict) -> list[str]:
    return [_fmt(r["accuracy"]), _fmt(r["precision"]), _fmt(r["recall"]), _fmt(r["f1"]), _fmt(r["log_loss"]),
            _fmt(r["ece"]), _fmt(r["msgs_per_s"], 0)]


def three_way_cells(r: dict) -> list[str]:
    cells = [_fmt(r["accuracy"]), _fmt(r["macro_f1"])]
    for name in ("negative", "neutral", "positive"):
        cells += [_fmt(r["per_class"][name]["precision"]), _fmt(r["per_class"][name]["recall"])]
    return cells + [_fmt(r["neutral_called_negative"]), _fmt(r["msgs_per_s"], 0)]


def unlabelled_cells(r: dict) -> list[str]:
    return [_fmt(r["called_negative"]), _fmt(r["msgs_per_s"], 0)]


COLUMNS = {
    "binary": (["Accuracy", "Precision", "Recall", "F1", "Log loss", "ECE", "Msgs/s"], binary_cells),
    "three-way": (["Accuracy", "Macro-F1", "Neg P", "Neg R", "Neu P", "Neu R", "Pos P", "Pos R",
                   "Neutral called neg", "Msgs/s"], three_way_cells),
    "unlabelled": (["Called negative", "Msgs/s"], unlabelled_cells),
}

NOTES = {
    "binary": "Precision, recall and F1 treat **negative** as the class to find (a text is predicted negative when "
              "negative is the model's top class). Log loss is binary cross-entropy on P(negative); ECE over 10 "
              "confidence bins.",
    "three-way": "Three classes (negative, neutral, positive). Macro-F1 is the mean of the three classes' F1; "
                 "\"neutral called neg\" is the share of truly neutral texts predicted negative. A two-class "
                 "model never predicts neutral.",
    "unlabelled": "Unlabelled everyday messages: the share each model calls negative.",
}


def matrix_text(r: dict) -> str:
    return "[" + ", ".join("[" + ", ".join(str(v) for v in row) + "]" for row in r["confusion_matrix"]["matrix"]) + "]"


def render_markdown(results: list[dict], title: str) -> str:
    lines = [f"# {title}", ""]
    groups = sections(results)
    if len(groups) > 1:
        header, table = summary_rows(results)
        lines += ["## Summary", "", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in table]
        lines.append("")
    for name, kind, rows in groups:
        columns, cells = COLUMNS[kind]
        lines += [f"## {name}", "", f"n = {rows[0]['n']}. " + NOTES[kind], "",
                  "| Model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
        for r in rows:
            label = str(r["label"]).replace("|", "\\|")
            lines.append(f"| {label} | " + " | ".join(cells(r)) + " |")
        if kind != "unlabelled":
            order = ", ".join(rows[0]["confusion_matrix"]["labels"])
            lines += ["", f"Confusion matrices (rows: actual, columns: predicted; {order}):", ""]
            lines += [f"- {r['label']}: {matrix_text(r)}" for r in rows]
        if "by_length" in rows[0]:
            buckets = [b["bucket"] for b in rows[0]["by_length"]]
            lines += ["", "Accuracy by text length:", "",
                      "| Model | " + " | ".join(f"{b} (n={x['n']})" for b, x in zip(buckets, rows[0]["by_length"]))
                      + " |", "|---|" + "---:|" * len(buckets)]
            for r in rows:
                lines.append(f"| {r['label']} | " + " | ".join(_fmt(b["accuracy"]) for b in r["by_length"]) + " |")
        lines.append("")
    return "\n".join(lines)


PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")

HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>{{ title }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:80em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f4f4f4}
.plots{display:flex;flex-wrap:wrap;gap:2em}figure{margin:0}figcaption{font-size:.9em;color:#555}
</style></head><body>
<h1>{{ title }}</h1>
{% if summary %}<h2>Summary</h2>
<table><thead><tr>{% for h in summary.header %}<th>{{ h }}</th>{% endfor %}</tr></thead><tbody>
{% for row in summary.rows %}<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>{% endif %}
{% for s in sections %}<h2>{{ s.name }}</h2>
<p>n = {{ s.n }}. {{ s.note }}</p>
<table><thead><tr><th>Model</th>{% for h in s.columns %}<th>{{ h }}</th>{% endfor %}
{% if s.matrix_order %}<th>Confusion (rows actual, columns predicted; {{ s.matrix_order }})</th>{% endif %}</tr></thead>
<tbody>
{% for r in s.rows %}<tr><td><span style="color:{{ r.color }}">&#9632;</span> {{ r.label }}</td>
{% for c in r.cells %}<td>{{ c }}</td>{% endfor %}{% if s.matrix_order %}<td>{{ r.matrix }}</td>{% endif %}</tr>
{% endfor %}</tbody></table>
<div class="plots">
{% for p in s.plots %}<figure>{{ p.svg | safe }}<figcaption>{{ p.caption }}</figcaption></figure>
{% endfor %}</div>
{% endfor %}</body></html>
"""


def _escape(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))


def _bars_svg(results: list[dict], measures: Sequence[tuple[str, float]]) -> str:
    """Horizontal bars of each result's ``measures`` (key, opacity), values in [0, 1]."""
    width, row_h, left = 460, 22, 190
    height = 30 + row_h * len(measures) * len(results)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    y = 20
    for i, r in enumerate(results):
        color = PALETTE[i % len(PALETTE)]
        for metric, opacity in measures:
            value = r.get(metric) or 0.0
            w = (width - left - 50) * value
            parts.append(f'<text x="{left - 6}" y="{y + 14}" font-size="11" text-anchor="end">'
                         f'{_escape(str(r["label"]))} {_escape(metric)}</text>')
            parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{row_h - 6}" fill="{color}" '
                         f'fill-opacity="{opacity}"/>')
            parts.append(f'<text x="{left + w + 4:.1f}" y="{y + 14}" font-size="11">{value:.3f}</text>')
            y += row_h
    parts.append("</svg>")
    return "".join(parts)


def _line_plot_svg(series: list[tuple[str, str, list[tuple[float, float]]]], x_labels: list[str] | None,
                   diagonal: bool) -> str:
    size, pad = 300, 40
    span = size - 2 * pad

    def px(x):
        return pad + x * span

    def py(y):
        return size - pad - y * span

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" role="img">',
             f'<rect x="{pad}" y="{pad}" width="{span}" height="{span}" fill="none" stroke="#999"/>']
    if diagonal:
        parts.append(f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(1)}" y2="{py(1)}" stroke="#bbb" '
                     'stroke-dasharray="4 3"/>')
    for tick in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{pad - 4}" y="{py(tick) + 4:.1f}" font-size="10" text-anchor="end">{tick}</text>')
        if not x_labels:
            parts.append(f'<text x="{px(tick):.1f}" y="{size - pad + 14}" font-size="10" '
                         f'text-anchor="middle">{tick}</text>')
    if x_labels:
        for i, text in enumerate(x_labels):
            x = i / max(1, len(x_labels) - 1)
            parts.append(f'<text x="{px(x):.1f}" y="{size - pad + 14}" font-size="9" text-anchor="middle">'
                         f'{_escape(text)}</text>')
    for label, color, points in series:
        if not points:
            continue
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2">'
                     f'<title>{_escape(label)}</title></polyline>')
        for x, y in points:
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}"/>')
    parts.append("</svg>")
    return "".join(parts)


def length_plot(rows: list[dict]) -> str:
    buckets = [b["bucket"].replace(" words", "") for b in rows[0]["by_length"]]
    lengths = [
        (str(r["label"]), PALETTE[i % len(PALETTE)],
         [(j / max(1, len(buckets) - 1), b["accuracy"]) for j, b in enumerate(r.get("by_length", []))
          if b["accuracy"] is not None])
        for i, r in enumerate(rows)]
    return _line_plot_svg(lengths, buckets, diagonal=False)


def plots(kind: str, rows: list[dict]) -> list[dict]:
    """The figures of one set's section."""
    if kind == "unlabelled":
        return [{"svg": _bars_svg(rows, [("called_negative", 1.0)]), "caption": "Share called negative"}]
    if kind == "three-way":
        return [{"svg": _bars_svg(rows, [("macro_f1", 1.0), ("neutral_called_negative", 0.55)]),
                 "caption": "Macro-F1 and the share of neutral texts called negative"},
                {"svg": length_plot(rows), "caption": "Accuracy by text length (words)"}]
    reliability = [
        (str(r["label"]), PALETTE[i % len(PALETTE)],
         [(b["mean_confidence"], b["accuracy"]) for b in r["reliability"] if b["count"]])
        for i, r in enumerate(rows)]
    return [{"svg": _bars_svg(rows, [("accuracy", 1.0), ("f1", 0.55)]),
             "caption": "Accuracy and negative-class F1"},
            {"svg": _line_plot_svg(reliability, None, diagonal=True),
             "caption": "Reliability: accuracy against mean confidence per bin (the diagonal is perfect "
                        "calibration)"},
            {"svg": length_plot(rows), "caption": "Accuracy by text length (words)"}]


def render_html(results: list[dict], title: str) -> str:
    from jinja2 import Environment

    env = Environment(autoescape=True)
    groups = sections(results)
    models = list(dict.fromkeys(str(r["label"]) for r in results))
    color = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}
    rendered = []
    for name, kind, rows in groups:
        columns, cells = COLUMNS[kind]
        rendered.append({
            "name": name, "n": rows[0]["n"], "note": NOTES[kind].replace("**", ""), "columns": columns,
            "matrix_order": ", ".join(rows[0]["confusion_matrix"]["labels"]) if kind != "unlabelled" else "",
            "rows": [{"label": str(r["label"]), "color": color[str(r["label"])], "cells": cells(r),
                      "matrix": matrix_text(r) if kind != "unlabelled" else ""} for r in rows],
            "plots": plots(kind, rows)})
    summary = None
    if len(groups) > 1:
        header, table = summary_rows(results)
        summary = {"header": header, "rows": table}
    return env.from_string(HTML_TEMPLATE).render(title=title, sections=rendered, summary=summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare classifiers on evaluation sets; writes OUT.md, OUT.html "
                                                 "and OUT.json.")
    parser.add_argument("--model", action="append", default=[], help="model folder or shipped name (repeat; "
                        "default: every shipped model, on a CPU less the GPU models); vader and textblob are the lexicon baselines")
    parser.add_argument("--data", action="append", default=[], help="evaluation file (repeat; default: SST-2 "
                        "dev, messages_dev.tsv and the SMS collection's ham)")
    parser.add_argument("--out", required=True, help="path prefix of the three files written")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-baselines", action="store_true", help="leave out the lexicon baselines")
    parser.add_argument("--batch-size", type=int, default=None, help="texts per predict_proba call")
    args = parser.parse_args(argv)
    results = compare(args.model, args.data or None, f"{args.out}.md", f"{args.out}.html", device=args.device,
                      baselines=not args.no_baselines, batch_size=args.batch_size)
    Path(f"{args.out}.json").write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    for r in results:
        figures = ", ".join(f"{k} {v}" for k, v in headline(r))
        print(f"{r['label']} on {r['dataset']}: {figures} ({_fmt(r['msgs_per_s'], 0)} msgs/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
