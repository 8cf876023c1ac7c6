"""The one batching policy: texts sorted by token length and packed under a budget of padded tokens.

Every batch pads to its longest member, so sorting keeps padding small, and the budget bounds a batch's memory
whatever the texts' lengths. The local scan, the Ray workers and a classifier called directly all use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from screener.classifiers.base import Classifier


def token_budget_batches(lengths: Sequence[int], budget: int, max_rows: int) -> list[np.ndarray]:
    """Indices of ``lengths`` grouped into batches, shortest first, each padding to its longest member and holding
    at most ``max_rows`` rows and ``budget`` padded tokens (a text longer than the budget goes alone)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    for end in range(1, len(order) + 1):
        too_many = end - start > max_rows
        too_long = (end - start) * max(1, int(lengths[order[end - 1]])) > budget
        if end - start > 1 and (too_many or too_long):
            batches.append(order[start:end - 1])
            start = end - 1
    if start < len(order):
        batches.append(order[start:])
    return batches


def predict_proba(clf: Classifier, texts: Sequence[str], max_rows: int,
                  token_budget: int | None = None, lengths: Sequence[int] | None = None) -> np.ndarray:
    """Class probabilities of ``texts``, shape ``(len(texts), len(clf.labels))``, in input order. A classifier that
    sizes its own batches gets them all in one call; any other gets token-budget batches of at most ``max_rows``
    texts, under ``token_budget`` padded tokens (default: the classifier's own budget). ``lengths`` are the texts'
    ``clf.token_lengths`` where the caller computed them already (on another thread, say)."""
    out = np.empty((len(texts), len(clf.labels)), dtype=np.float32)
    if not texts:
        return out
    if clf.sizes_own_batches:
        out[:] = clf.predict_proba(texts)
        return out
    budget = clf.token_budget if token_budget is None else token_budget
    if lengths is None:
        lengths = clf.token_lengths(texts)
    for idx in token_budget_batches(lengths, budget, max_rows):
        out[idx] = clf.predict_proba([texts[i] for i in idx])
    return out
