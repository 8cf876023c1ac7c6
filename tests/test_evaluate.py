"""Evaluation metrics against hand-computed values, `evaluate` on a real (tiny) model, and the comparison table."""

from __future__ import annotations

import math
from html.parser import HTMLParser

import numpy as np
import pytest

from screener.classifiers.base import ClassifierBase, binary_proba
from training.evaluate import evaluate_classifier, metrics

LABELS = [0, 0, 1, 1, 0]  # 1 = positive, 0 = negative (SST-2)
P_NEG = [0.9, 0.4, 0.2, 0.6, 0.7]
# predicted negative: T F F T T; actually negative: T T F F T -> TP 2 (rows 0, 4), FN 1 (row 1), FP 1 (row 3), TN 1


def test_negative_class_precision_recall_f1_and_confusion_matrix():
    m = metrics(LABELS, P_NEG)
    assert m["n"] == 5
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["confusion_matrix"]["matrix"] == [[2, 1], [1, 1]]


def test_log_loss_is_cross_entropy_on_probabilities_not_hard_labels():
    expected = -(math.log(0.9) + math.log(0.4) + math.log(0.8) + math.log(0.4) + math.log(0.7)) / 5
    assert metrics(LABELS, P_NEG)["log_loss"] == pytest.approx(expected)


def test_ece_and_reliability_bins_by_hand():
    m = metrics(LABELS, P_NEG)
    # confidences 0.9 ok, 0.6 wrong, 0.8 ok, 0.6 wrong, 0.7 ok
    # bins: (.5,.6]: 2 items conf .6 acc 0; (.6,.7]: conf .7 acc 1; (.7,.8]: .8/1; (.8,.9]: .9/1
    assert m["ece"] == pytest.approx(2 / 5 * 0.6 + 1 / 5 * 0.3 + 1 / 5 * 0.2 + 1 / 5 * 0.1)
    counts = [b["count"] for b in m["reliability"]]
    assert counts == [0, 0, 0, 0, 0, 2, 1, 1, 1, 0]
    assert m["reliability"][5]["accuracy"] == 0.0 and m["reliability"][8]["mean_confidence"] == pytest.approx(0.9)


def test_perfectly_confident_and_right_has_zero_ece_and_near_zero_loss():
    m = metrics([0, 1, 1], [1.0, 0.0, 0.0])
    assert m["accuracy"] == 1.0 and m["ece"] == 0.0 and m["log_loss"] < 1e-6


def test_accuracy_by_word_count_bucket():
    texts = ["one two three", "a b c d e f g", "x", "w " * 30, "v " * 60]
    m = metrics(LABELS, P_NEG, texts)
    by = {b["bucket"]: b for b in m["by_length"]}
    assert by["1-5 words"]["n"] == 2 and by["1-5 words"]["accuracy"] == 1.0  # rows 0 and 2, both right
    assert by["6-10 words"]["n"] == 1 and by["6-10 words"]["accuracy"] == 0.0
    assert by["11-20 words"]["n"] == 0 and by["11-20 words"]["accuracy"] is None
    assert by["21-40 words"]["accuracy"] == 0.0 and by["41+ words"]["accuracy"] == 1.0


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="equal non-empty"):
        metrics([0, 1], [0.5])


class StubClassifier(ClassifierBase):
    name = "stub"
    model_id = "stub0000"

    def predict_proba(self, texts):
        return binary_proba(np.array([0.9 if "bad" in t else 0.2 for t in texts], dtype=np.float32))

    def token_lengths(self, texts):
        return [len(t.split()) for t in texts]


def test_evaluate_classifier_reports_throughput_and_model():
    texts = ["bad", "good", "bad day", "fine"] * 3
    labels = [0, 1, 0, 1] * 3
    r = evaluate_classifier(StubClassifier(), texts, labels, batch_size=5)
    assert r["accuracy"] == 1.0 and r["n"] == 12 and r["model"] == "stub" and r["model_id"] == "stub0000"
    assert r["msgs_per_s"] > 0 and r["seconds"] >= 0


@pytest.fixture
def tiny_model_folder(tmp_path):
    pytest.importorskip("peft")
    from test_llm_classifier import make_adapter_model

    folder, _ = make_adapter_model(tmp_path)
    return folder


def write_tsv(path, rows):
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    return path


def test_evaluate_loads_a_model_folder_and_matches_its_predictions(tmp_path, tiny_model_folder):
    from screener.classifiers.registry import load_classifier
    from training.evaluate import evaluate

    rows = [("good movie", 1), ("bad movie", 0), ("awful plot", 0), ("great", 1)]
    data = write_tsv(tmp_path / "d.tsv", rows)
    r = evaluate(str(tiny_model_folder), str(data), device="cpu")
    p = load_classifier(str(tiny_model_folder), device="cpu").predict_negative([t for t, _ in rows])
    expected = metrics([y for _, y in rows], p)
    assert r["n"] == 4
    for key in ("accuracy", "precision", "recall", "f1", "log_loss", "ece"):
        assert r[key] == pytest.approx(expected[key], abs=1e-6)


def test_compare_writes_the_table_with_lexicon_baselines_and_escaped_html(tmp_path, tiny_model_folder):
    pytest.importorskip("vaderSentiment")
    pytest.importorskip("textblob")
    from training.compare import compare

    rows = [("a wonderful, great movie", 1), ("terrible and awful", 0), ("I love it", 1), ("I hate it", 0)]
    data = write_tsv(tmp_path / "d.tsv", rows)
    hostile = tmp_path / "<img src=x onerror=alert(1)>"
    tiny_model_folder.rename(hostile)
    results = compare([str(hostile)], str(data), str(tmp_path / "t.md"), str(tmp_path / "t.html"), device="cpu")
    assert [r["label"] for r in results] == [str(hostile), "vader", "textblob"]
    by = {r["label"]: r for r in results}
    assert by["vader"]["accuracy"] == 1.0 and by["textblob"]["accuracy"] == 1.0
    md = (tmp_path / "t.md").read_text()
    assert "| vader | 1.000 |" in md and "| textblob | 1.000 |" in md
    html = (tmp_path / "t.html").read_text()
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags = []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)

    parser = Tags()
    parser.feed(html)
    assert "script" not in parser.tags and "img" not in parser.tags
    assert parser.tags.count("svg") == 3 and "table" in parser.tags


def test_text_report_shows_the_headline_figures():
    from training.evaluate import format_report

    r = metrics(LABELS, P_NEG, ["a b", "c", "d e f", "g", "h"])
    r.update(model="stub", model_id="x", data="d.tsv", seconds=0.5, msgs_per_s=10.0)
    text = format_report(r)
    assert "accuracy  0.6000" in text and "f1 0.6667" in text and "[[     2,      1]," in text
    assert "1-5 words    n=5" in text


def test_missing_or_malformed_data_is_an_input_error(tmp_path):
    from screener.errors import InputError
    from training.evaluate import evaluate

    with pytest.raises(InputError, match="no such data file"):
        evaluate("default", str(tmp_path / "missing.tsv"))
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tlabel\nhello\tmaybe\n")
    with pytest.raises(InputError, match="label 'maybe'"):
        evaluate("default", str(bad))
