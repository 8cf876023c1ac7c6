"""Three-way evaluation (training/evaluate.py) against hand-computed figures; the negative decision of a
three-class model on binary data; the multi-set comparison (training/compare.py)."""

from __future__ import annotations

import numpy as np
import pytest

from screener.classifiers.base import BINARY_LABELS, THREE_WAY_LABELS, ClassifierBase
from training.evaluate import (evaluate_classifier, format_report, negative_decisions, score, three_way_metrics,
                               three_way_predictions)

# actual:    neg neg neu neu neu pos pos neu
# predicted: neg neu neg neu neu pos neg pos
Y = [0, 0, 1, 1, 1, 2, 2, 1]
PRED = [0, 1, 0, 1, 1, 2, 0, 2]
# confusion (rows actual, columns predicted): [[1, 1, 0], [1, 2, 1], [1, 0, 1]]
# negative: P 1/3, R 1/2, F1 2/5; neutral: P 2/3, R 2/4, F1 4/7; positive: P 1/2, R 1/2, F1 1/2


def test_three_way_figures_by_hand():
    m = three_way_metrics(Y, PRED)
    assert m["confusion_matrix"] == {"labels": ["negative", "neutral", "positive"],
                                     "matrix": [[1, 1, 0], [1, 2, 1], [1, 0, 1]]}
    assert m["accuracy"] == pytest.approx(4 / 8)
    pc = m["per_class"]
    assert (pc["negative"]["precision"], pc["negative"]["recall"], pc["negative"]["f1"]) == \
        pytest.approx((1 / 3, 1 / 2, 2 / 5))
    assert (pc["neutral"]["precision"], pc["neutral"]["recall"], pc["neutral"]["f1"]) == \
        pytest.approx((2 / 3, 1 / 2, 4 / 7))
    assert (pc["positive"]["precision"], pc["positive"]["recall"], pc["positive"]["f1"]) == \
        pytest.approx((1 / 2, 1 / 2, 1 / 2))
    assert (pc["neutral"]["support"], pc["neutral"]["predicted"]) == (4, 3)
    assert m["macro_f1"] == pytest.approx((2 / 5 + 4 / 7 + 1 / 2) / 3)
    assert m["neutral_called_negative"] == pytest.approx(1 / 4)
    assert m["called_negative"] == pytest.approx(3 / 8)
    assert m["log_loss"] is None


def test_a_class_never_predicted_has_zero_precision_and_f1_and_no_neutral_means_no_share():
    m = three_way_metrics([0, 2, 2], [0, 0, 2])
    assert m["per_class"]["neutral"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "predicted": 0}
    assert m["neutral_called_negative"] is None
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)  # neg P 1/2 R 1 -> 2/3; pos P 1 R 1/2 -> 2/3
    with pytest.raises(ValueError, match="class indices"):
        three_way_metrics([0, 3], [0, 1])


def test_three_way_log_loss_from_probabilities():
    probs = np.array([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]])
    m = three_way_metrics([0, 1, 0], [0, 1, 2], probs)
    assert m["log_loss"] == pytest.approx(-(np.log(0.5) + np.log(0.6) + np.log(0.1)) / 3)


def test_negative_is_predicted_where_it_is_the_top_class():
    three = np.array([[0.40, 0.35, 0.25], [0.45, 0.10, 0.45], [0.30, 0.45, 0.25], [0.60, 0.10, 0.30]])
    p, pred = negative_decisions(three, THREE_WAY_LABELS)
    assert p.tolist() == pytest.approx([0.40, 0.45, 0.30, 0.60])
    assert pred.tolist() == [True, True, False, True]  # a tie goes to the first class, negative
    _, pred2 = negative_decisions(np.array([[0.5, 0.5], [0.49, 0.51]]), BINARY_LABELS)
    assert pred2.tolist() == [True, False]  # two classes: P(negative) >= 0.5


def test_binary_data_scored_with_a_three_class_model_uses_the_top_class():
    # SST-2 convention: 0 negative, 1 positive
    probs = np.array([[0.40, 0.35, 0.25], [0.30, 0.45, 0.25], [0.10, 0.20, 0.70], [0.20, 0.10, 0.70]])
    m = score(probs, THREE_WAY_LABELS, [0, 0, 1, 0], BINARY_LABELS)
    # predicted negative: T F F F; actually negative: T T F T -> TP 1, FN 2, FP 0, TN 1
    assert m["confusion_matrix"]["matrix"] == [[1, 2], [0, 1]]
    assert (m["accuracy"], m["precision"], m["recall"]) == pytest.approx((2 / 4, 1.0, 1 / 3))
    # log loss stays that of P(negative) as a forecast of negative
    assert m["log_loss"] == pytest.approx(-(np.log(0.4) + np.log(0.3) + np.log(0.9) + np.log(0.2)) / 4)


def test_three_way_data_scored_with_a_binary_model_never_predicts_neutral():
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    predicted, ordered = three_way_predictions(probs, BINARY_LABELS)
    assert predicted.tolist() == [0, 0, 2] and ordered is None
    m = score(probs, BINARY_LABELS, [0, 1, 2], THREE_WAY_LABELS)
    assert m["confusion_matrix"]["matrix"] == [[1, 0, 0], [1, 0, 0], [0, 0, 1]]
    assert m["neutral_called_negative"] == 1.0 and m["per_class"]["neutral"]["predicted"] == 0
    with pytest.raises(ValueError, match="not among"):
        three_way_predictions(probs, ("negative", "class_1"))


def test_unlabelled_texts_report_the_share_called_negative():
    probs = np.array([[0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8], [0.34, 0.33, 0.33]])
    assert score(probs, THREE_WAY_LABELS, None) == {"n": 4, "called_negative": 0.5}


class ThreeWayStub(ClassifierBase):
    """Negative for 'bad', neutral for 'meeting', positive otherwise."""

    name = "stub3"
    model_id = "stub3000"
    labels = THREE_WAY_LABELS

    def predict_proba(self, texts):
        rows = [[0.8, 0.1, 0.1] if "bad" in t else [0.1, 0.8, 0.1] if "meeting" in t else [0.1, 0.1, 0.8]
                for t in texts]
        return np.array(rows, dtype=np.float32)

    def token_lengths(self, texts):
        return [len(t.split()) for t in texts]


def test_evaluate_classifier_on_three_way_data_and_its_text_report():
    texts = ["bad day", "meeting at 6", "lovely", "bad meeting", "meeting moved", "great"]
    labels = [0, 1, 2, 1, 1, 2]
    r = evaluate_classifier(ThreeWayStub(), texts, labels, batch_size=4, classes=THREE_WAY_LABELS)
    assert r["confusion_matrix"]["matrix"] == [[1, 0, 0], [1, 2, 0], [0, 0, 2]]
    assert r["neutral_called_negative"] == pytest.approx(1 / 3) and r["model_classes"] == list(THREE_WAY_LABELS)
    r.update(data="m.tsv")
    text = format_report(r)
    assert "macro-F1  " + f"{r['macro_f1']:.4f}" in text and "neutral called negative  0.3333" in text
    assert "[     1,      2,      0]" in text


def test_compare_over_binary_three_way_and_unlabelled_sets(tmp_path, monkeypatch):
    from training import compare as compare_module

    sst = tmp_path / "dev.tsv"
    sst.write_text("sentence\tlabel\nbad film\t0\ngreat film\t1\n", encoding="utf-8")
    messages = tmp_path / "messages_dev.tsv"
    messages.write_text("id\tsource\tlabel\ttext\na\tsms\tneutral\tmeeting at 6\nb\tsms\tnegative\tbad day\n"
                        "c\tsms\tpositive\tlovely\n", encoding="utf-8")
    sms = tmp_path / "SMSSpamCollection.tsv"
    sms.write_text("Label\tSMS\nham\tmeeting now\nham\tbad luck\nspam\tWIN\n", encoding="utf-8")
    monkeypatch.setattr(compare_module, "load_any", lambda name, device: ThreeWayStub())
    results = compare_module.compare(["stub3"], [str(sst), str(messages), str(sms)], str(tmp_path / "c.md"),
                                     str(tmp_path / "c.html"), baselines=False)
    by = {r["kind"]: r for r in results}
    assert [r["kind"] for r in results] == ["binary", "three-way", "unlabelled"]
    assert by["binary"]["accuracy"] == 1.0 and by["three-way"]["macro_f1"] == 1.0
    assert by["unlabelled"] == {**by["unlabelled"], "n": 2, "called_negative": 0.5}
    md = (tmp_path / "c.md").read_text()
    assert "## Summary" in md and "| stub3 | 1.000 | 1.000 | 1.000 | 0.000 | 0.500 |" in md
    assert "- stub3: [[1, 0, 0], [0, 1, 0], [0, 0, 1]]" in md
    html = (tmp_path / "c.html").read_text()
    assert html.count("<svg") == 3 + 2 + 1 and "Share called negative" in html
