"""DistinctTexts: the wrapped classifier sees each distinct text once, and the scores come back in input order."""

from __future__ import annotations

import numpy as np

from conftest import KeywordClassifier
from training.distinct import DistinctTexts


class Recording(KeywordClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def predict_proba(self, texts):
        self.seen.extend(texts)
        return super().predict_proba(texts)


def test_each_distinct_text_is_scored_once_and_scores_follow_the_input(tmp_path):
    inner = Recording()
    clf = DistinctTexts(inner, tmp_path / "kept.parquet")
    assert (clf.name, clf.model_id, clf.labels) == (inner.name, inner.model_id, inner.labels)
    got = clf.predict_proba(["bad a", "fine", "bad a", "fine", "x"])
    assert sorted(inner.seen) == ["bad a", "fine", "x"]
    assert np.allclose(got[:, 0], [0.9, 0.1, 0.9, 0.1, 0.1])
    clf.predict_proba(["fine", "bad b"])
    assert sorted(inner.seen) == ["bad a", "bad b", "fine", "x"] and clf.scored == 4
    assert clf.predict_proba([]).shape == (0, 2)
    clf.save()

    again = Recording()
    kept = DistinctTexts(again, tmp_path / "kept.parquet")
    assert np.allclose(kept.predict_proba(["bad b", "x"])[:, 0], [0.9, 0.1]) and again.seen == []


def test_closing_closes_the_wrapped_classifier():
    inner = KeywordClassifier()
    with DistinctTexts(inner):
        pass
    assert inner.closed == 1
