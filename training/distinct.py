"""A classifier that asks the one it wraps once per distinct text.

A simulated archive draws its messages from a few thousand real texts, so most of its messages repeat one seen
before. The wrapped classifier scores a text the same wherever it appears; scoring each distinct text once and
reusing the score lets a scan of a large simulated archive cost what its distinct texts cost. The scan path around
it (windows, commits, statistics, flag rules) is the one ``screener scan`` runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from screener import batching
from screener.classifiers.base import Classifier, ClassifierBase

BATCH_SIZE = 64


class DistinctTexts(ClassifierBase):
    """``inner``, asked once per distinct text; ``keep`` (a Parquet file) holds the scores between runs."""

    sizes_own_batches = True
    # Whole windows of many messages: the more a call holds, the more of it repeats texts already scored.
    min_window_rows = 1 << 17

    def __init__(self, inner: Classifier, keep: Path | None = None) -> None:
        self.inner, self.keep = inner, keep
        self.name, self.model_id, self.labels = inner.name, inner.model_id, inner.labels
        self.scores: dict[str, np.ndarray] = {}
        if keep is not None and keep.exists():
            kept = pq.read_table(keep)
            self.scores = dict(zip(kept["text"].to_pylist(), np.asarray(kept["proba"].to_pylist(), np.float32)))
        self.scored = 0

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        new = list(dict.fromkeys(t for t in texts if t not in self.scores))
        if new:
            self.scores.update(zip(new, batching.predict_proba(self.inner, new, BATCH_SIZE)))
            self.scored += len(new)
        if not texts:
            return np.empty((0, len(self.labels)), dtype=np.float32)
        return np.stack([self.scores[t] for t in texts])

    def save(self) -> None:
        """Write the scores to ``keep`` for a later run over other archives."""
        if self.keep is None:
            return
        texts = list(self.scores)
        pq.write_table(pa.table({"text": texts, "proba": [self.scores[t].tolist() for t in texts]}), self.keep)

    def close(self) -> None:
        self.inner.close()
