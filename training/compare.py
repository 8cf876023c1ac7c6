"""Several models over the same labelled data in one run: the paper's table (Markdown) and an HTML page with plots.

Lexicon baselines sit beside the fine-tuned models: ``vader`` (vaderSentiment's compound score) and ``textblob``
(TextBlob's pattern-lexicon polarity). Both ship their lexicons in their PyPI packages and need no network.
Their scores in [-1, 1] map to P(negative) = (1 - score) / 2, so a neutral text sits at 0.5.
"""

from __future__ import annotations

import hashlib
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


def compare(models: list[str], data: str, out_md: str, out_html: str, text_col: str = "text",
            label_col: str = "label", positive=None, negative=None, device: str = "auto",
            baselines: bool = True, batch_size: int | None = None, title: str | None = None) -> list[dict]:
    """Evaluate every model (plus the lexicon baselines unless ``baselines=False``) on ``data``; write both files.

    Returns one evaluation dict per model (see ``training.evaluate.metrics``), with ``label`` and ``load_seconds``.
    """
    from training.evaluate import read_data

    protected = output.data_files(data)
    for out in (out_md, out_html):
        output.check_target(out, protected)
    rows = read_data(data, text_col, label_col, positive, negative)
    names = list(models) + [b for b in BASELINES if baselines and b not in models]
    results = []
    for name in names:
        start = time.perf_counter()
        classifier = load_any(name, device)
        load_seconds = time.perf_counter() - start
        result = evaluate_classifier(classifier, rows.texts, rows.labels, batch_size)
        result.update({"label": name, "load_seconds": load_seconds, "data": str(data)})
        results.append(result)
    title = title or f"Sentiment classifiers on {Path(data).name}"
    output.write_file(out_md, render_markdown(results, title).encode("utf-8"), protected, mode=output.SHARED)
    output.write_file(out_html, render_html(results, title).encode("utf-8"), protected, mode=output.SHARED)
    return results


def _fmt(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_markdown(results: list[dict], title: str) -> str:
    lines = [f"# {title}", "",
             f"n = {results[0]['n'] if results else 0}. Precision, recall and F1 treat **negative** as the class "
             "to find. Log loss is binary cross-entropy on P(negative); ECE over 10 confidence bins.", "",
             "| Model | Accuracy | Precision | Recall | F1 | Log loss | ECE | Msgs/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        label = str(r["label"]).replace("|", "\\|")
        lines.append(f"| {label} | {_fmt(r['accuracy'])} | {_fmt(r['precision'])} | {_fmt(r['recall'])} | "
                     f"{_fmt(r['f1'])} | {_fmt(r['log_loss'])} | {_fmt(r['ece'])} | {_fmt(r['msgs_per_s'], 0)} |")
    lines += ["", "## Confusion matrices (rows: actual, columns: predicted; negative first)", ""]
    for r in results:
        (a, b), (c, d) = r["confusion_matrix"]["matrix"]
        lines.append(f"- {r['label']}: [[{a}, {b}], [{c}, {d}]]")
    if results and "by_length" in results[0]:
        buckets = [b["bucket"] for b in results[0]["by_length"]]
        lines += ["", "## Accuracy by text length", "",
                  "| Model | " + " | ".join(f"{b} (n={x['n']})" for b, x in zip(buckets, results[0]["by_length"]))
                  + " |", "|---|" + "---:|" * len(buckets)]
        for r in results:
            lines.append(f"| {r['label']} | " + " | ".join(_fmt(b["accuracy"]) for b in r["by_length"]) + " |")
    return "\n".join(lines) + "\n"


PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")

HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>{{ title }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f4f4f4}
.plots{display:flex;flex-wrap:wrap;gap:2em}figure{margin:0}figcaption{font-size:.9em;color:#555}
</style></head><body>
<h1>{{ title }}</h1>
<p>n = {{ n }}. Precision, recall and F1 treat <b>negative</b> as the class to find. Log loss is binary
cross-entropy on P(negative); ECE over {{ nbins }} confidence bins.</p>
<table><thead><tr><th>Model</th><th>Accuracy</th><th>Precision</th><th>Recall</th><th>F1</th><th>Log loss</th>
<th>ECE</th><th>Confusion (rows actual, columns predicted; negative first)</th><th>Msgs/s</th></tr></thead>
<tbody>
{% for r in rows %}<tr><td><span style="color:{{ r.color }}">&#9632;</span> {{ r.label }}</td>
<td>{{ r.accuracy }}</td><td>{{ r.precision }}</td><td>{{ r.recall }}</td><td>{{ r.f1 }}</td>
<td>{{ r.log_loss }}</td><td>{{ r.ece }}</td><td>{{ r.matrix }}</td><td>{{ r.msgs_per_s }}</td></tr>
{% endfor %}</tbody></table>
<div class="plots">
<figure>{{ bars | safe }}<figcaption>Accuracy and negative-class F1</figcaption></figure>
<figure>{{ reliability | safe }}<figcaption>Reliability: accuracy against mean confidence per bin
(the diagonal is perfect calibration)</figcaption></figure>
<figure>{{ lengths | safe }}<figcaption>Accuracy by text length (words)</figcaption></figure>
</div></body></html>
"""


def _escape(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))


def _bars_svg(results: list[dict]) -> str:
    width, row_h, left = 460, 22, 150
    height = 30 + row_h * 2 * len(results)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    y = 20
    for i, r in enumerate(results):
        color = PALETTE[i % len(PALETTE)]
        for metric, opacity in (("accuracy", 1.0), ("f1", 0.55)):
            value = r[metric] or 0.0
            w = (width - left - 50) * value
            parts.append(f'<text x="{left - 6}" y="{y + 14}" font-size="11" text-anchor="end">'
                         f'{_escape(str(r["label"]))} {metric}</text>')
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


def render_html(results: list[dict], title: str) -> str:
    from jinja2 import Environment

    env = Environment(autoescape=True)
    rows = []
    for i, r in enumerate(results):
        (a, b), (c, d) = r["confusion_matrix"]["matrix"]
        rows.append({"label": str(r["label"]), "color": PALETTE[i % len(PALETTE)],
                     "accuracy": _fmt(r["accuracy"]), "precision": _fmt(r["precision"]),
                     "recall": _fmt(r["recall"]), "f1": _fmt(r["f1"]), "log_loss": _fmt(r["log_loss"]),
                     "ece": _fmt(r["ece"]), "matrix": f"[[{a}, {b}], [{c}, {d}]]",
                     "msgs_per_s": _fmt(r["msgs_per_s"], 0)})
    reliability = [
        (str(r["label"]), PALETTE[i % len(PALETTE)],
         [(b["mean_confidence"], b["accuracy"]) for b in r["reliability"] if b["count"]])
        for i, r in enumerate(results)]
    buckets = [b["bucket"].replace(" words", "") for b in results[0]["by_length"]] if results else []
    lengths = [
        (str(r["label"]), PALETTE[i % len(PALETTE)],
         [(j / max(1, len(buckets) - 1), b["accuracy"]) for j, b in enumerate(r.get("by_length", []))
          if b["accuracy"] is not None])
        for i, r in enumerate(results)]
    return env.from_string(HTML_TEMPLATE).render(
        title=title, n=results[0]["n"] if results else 0, nbins=len(results[0]["reliability"]) if results else 0,
        rows=rows, bars=_bars_svg(results), reliability=_line_plot_svg(reliability, None, diagonal=True),
        lengths=_line_plot_svg(lengths, buckets, diagonal=False))
