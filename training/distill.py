"""Distillation: a stronger teacher's P(negative) on the training texts as soft targets for a small encoder.

The teacher file is Parquet, CSV or TSV with a text column (``text`` or ``sentence``) and ``p_negative``; rows
are matched to the training texts by exact text, so the teacher may have scored the texts in any order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

TEXT_COLUMNS = ("text", "sentence")
PROB_COLUMNS = ("p_negative", "p_neg")


def read_teacher(path: str | Path) -> dict[str, float]:
    """Text -> teacher P(negative). Where a text occurs twice the probabilities are averaged."""
    import polars as pl

    from training.data import read_table

    path = Path(path)
    df = read_table(path, "teacher probabilities file")
    text_col = next((c for c in TEXT_COLUMNS if c in df.columns), None)
    prob_col = next((c for c in PROB_COLUMNS if c in df.columns), None)
    if text_col is None or prob_col is None:
        raise ValueError(f"{path}: expected a text column {TEXT_COLUMNS} and a probability column "
                         f"{PROB_COLUMNS}, found {df.columns}")
    grouped = df.group_by(text_col).agg(pl.col(prob_col).cast(pl.Float64).mean())
    return dict(zip(grouped[text_col].to_list(), grouped[prob_col].to_list()))


def teacher_targets(teacher: dict[str, float], texts: Sequence[str], labels: Sequence[int],
                    min_coverage: float = 0.95) -> np.ndarray:
    """Soft target P(negative) per training text; texts the teacher did not score fall back to their hard label.

    Raises when fewer than ``min_coverage`` of the texts are covered: a teacher file for another data set
    would otherwise silently turn distillation into plain training.
    """
    targets = np.empty(len(texts), dtype=np.float32)
    covered = 0
    for i, (text, label) in enumerate(zip(texts, labels)):
        p = teacher.get(text)
        if p is None or not np.isfinite(p):
            targets[i] = 1.0 - float(label)
        else:
            targets[i] = min(max(float(p), 0.0), 1.0)
            covered += 1
    if texts and covered / len(texts) < min_coverage:
        raise ValueError(f"the teacher file covers {covered} of {len(texts)} training texts "
                         f"({covered / len(texts):.1%}); expected at least {min_coverage:.0%}: is it for this data?")
    return targets


def blend_targets(p_negative_teacher: np.ndarray, labels: Sequence[int], alpha: float) -> np.ndarray:
    """Target distribution over (negative, positive): ``alpha`` of the teacher's and ``1 - alpha`` of the hard
    label's. Cross-entropy against this mix equals the usual weighted sum of the two losses."""
    hard_neg = 1.0 - np.asarray(labels, dtype=np.float32)
    p_neg = alpha * np.asarray(p_negative_teacher, dtype=np.float32) + (1.0 - alpha) * hard_neg
    return np.stack([p_neg, 1.0 - p_neg], axis=1).astype(np.float32)
