"""Distillation: a stronger teacher's class probabilities on the training texts as soft targets for a small encoder.

A teacher file is Parquet, CSV or TSV with a text column (``text`` or ``sentence``), ``p_negative`` and, from a
three-way teacher, ``p_neutral`` and ``p_positive`` (``training.teacher`` writes them, with a ``source`` column
naming where each text came from: ``sst2``, ``sms``, ``sentiment140`` or ``augmented``). A file with ``p_negative`` alone is a
two-way teacher's: its neutral is 0 and its positive the rest. Rows are matched to the training texts by text
(exactly, else case-insensitively after cleaning), so the teacher may have scored them in any order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from screener.classifiers.base import BINARY_LABELS, NEGATIVE, THREE_WAY_LABELS
from training.data import read_table, text_key

TEXT_COLUMNS = ("text", "sentence")
PROB_COLUMNS = ("p_negative", "p_neutral", "p_positive")  # THREE_WAY_LABELS order
LEGACY_NEGATIVE = "p_neg"
# Sources whose texts carry a label of their own; a teacher's rows from any other source (the messages, augmented
# variants) are unlabelled, trained on with the teacher's targets alone.
LABELLED_SOURCES = ("sst2",)


@dataclass(frozen=True)
class Teacher:
    """A teacher file: text -> probabilities over ``THREE_WAY_LABELS`` (duplicates averaged), the same by
    ``training.data.text_key`` (a text that differs in case or spacing only), and the texts it scored from message
    sources, in file order, each once."""

    probs: dict[str, np.ndarray]
    message_texts: list[str]
    by_key: dict[str, np.ndarray]

    def get(self, text: str) -> np.ndarray | None:
        p = self.probs.get(text)
        return p if p is not None else self.by_key.get(text_key(text))


def read_teacher(path: str | Path) -> Teacher:

    path = Path(path)
    columns = read_table(path, "teacher probabilities file")
    text_col = next((c for c in TEXT_COLUMNS if c in columns), None)
    neg_col = next((c for c in (PROB_COLUMNS[0], LEGACY_NEGATIVE) if c in columns), None)
    if text_col is None or neg_col is None:
        raise ValueError(f"{path}: expected a text column {TEXT_COLUMNS} and a probability column "
                         f"{PROB_COLUMNS[0]!r}, found {list(columns)}")
    texts = ["" if t is None else str(t) for t in columns[text_col]]
    p_neg = np.asarray(columns[neg_col], dtype=np.float64)
    p_neu = np.asarray(columns[PROB_COLUMNS[1]], dtype=np.float64) if PROB_COLUMNS[1] in columns \
        else np.zeros_like(p_neg)
    p_pos = np.asarray(columns[PROB_COLUMNS[2]], dtype=np.float64) if PROB_COLUMNS[2] in columns \
        else 1.0 - p_neg - p_neu
    probs = np.clip(np.stack([p_neg, p_neu, p_pos], axis=1), 0.0, 1.0)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for text, row in zip(texts, probs):
        if not np.all(np.isfinite(row)):
            continue
        if text in sums:
            sums[text] = sums[text] + row
            counts[text] += 1
        else:
            sums[text], counts[text] = row.copy(), 1
    averaged = {t: (s / counts[t]).astype(np.float32) for t, s in sums.items()}
    by_key: dict[str, np.ndarray] = {}
    for text, p in averaged.items():
        by_key.setdefault(text_key(text), p)
    messages: list[str] = []
    if "source" in columns:
        seen = set()
        for text, source in zip(texts, columns["source"]):
            if source not in LABELLED_SOURCES and text in averaged and text not in seen:
                seen.add(text)
                messages.append(text)
    return Teacher(averaged, messages, by_key)


def in_classes(probs: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """Three-way probabilities as targets over ``classes``: for two classes, negative against the rest (neutral
    counts as not negative); otherwise the named columns, renormalised."""
    probs = np.asarray(probs, dtype=np.float32).reshape(-1, len(THREE_WAY_LABELS))
    if tuple(classes) == BINARY_LABELS:
        p_neg = probs[:, 0]
        return np.stack([p_neg, 1.0 - p_neg], axis=1)
    picked = probs[:, [THREE_WAY_LABELS.index(c) for c in classes]]
    total = picked.sum(axis=1, keepdims=True)
    return np.where(total > 0, picked / np.maximum(total, 1e-12), 1.0 / len(classes)).astype(np.float32)


def teacher_targets(teacher: Teacher, texts: Sequence[str], labels: Sequence[int], classes: Sequence[str],
                    min_coverage: float = 0.95) -> np.ndarray:
    """Soft targets over ``classes`` per training text; labelled texts the teacher did not score fall back to
    their hard label. A label of -1 means the text has none: the teacher must have scored it.

    Raises when fewer than ``min_coverage`` of the labelled texts are covered: a teacher file for another data
    set would otherwise silently turn distillation into plain training.
    """
    k = len(classes)
    if NEGATIVE not in classes:
        raise ValueError(f"classes {list(classes)} lack {NEGATIVE!r}")
    targets = np.zeros((len(texts), k), dtype=np.float32)
    labelled = covered = 0
    for i, (text, label) in enumerate(zip(texts, labels)):
        p = teacher.get(text)
        if label >= 0:
            labelled += 1
        if p is not None:
            targets[i] = in_classes(p, classes)[0]
            covered += label >= 0
        elif label >= 0:
            targets[i, label] = 1.0
        else:
            raise ValueError(f"the teacher file has no probabilities for the unlabelled text {text[:60]!r}")
    if labelled and covered / labelled < min_coverage:
        raise ValueError(f"the teacher file covers {covered} of {labelled} labelled training texts "
                         f"({covered / labelled:.1%}); expected at least {min_coverage:.0%}: is it for this data?")
    return targets


def hard_labels(labels: Sequence[int], like: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The one-hot of each row's label, shaped and typed like ``like`` (a row without a label, -1, all zeros),
    and which rows have one."""
    y = np.asarray(labels, dtype=np.int64)
    has = y >= 0
    hard = np.zeros_like(like)
    hard[np.flatnonzero(has), y[has]] = 1.0
    return hard, has


def blend_targets(teacher_probs: np.ndarray, labels: Sequence[int], alpha: float) -> np.ndarray:
    """Target distributions: ``alpha`` of the teacher's and ``1 - alpha`` of the hard label's one-hot where a row
    has a label (>= 0), the teacher's alone where it has none (-1). Cross-entropy against this mix equals the
    usual weighted sum of the two losses."""
    teacher_probs = np.asarray(teacher_probs, dtype=np.float32)
    hard, has = hard_labels(labels, teacher_probs)
    weight = np.where(has, alpha, 1.0).astype(np.float32)[:, None]
    return (weight * teacher_probs + (1.0 - weight) * hard).astype(np.float32)


def split_targets(teacher_probs: np.ndarray, labels: Sequence[int], alpha: float,
                  temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """The two terms of distillation at a temperature, each weighted as in ``blend_targets``: the hard labels'
    one-hot (``1 - alpha`` where a row has a label, 0 where it has none) and the teacher's probabilities softened
    to ``p ** (1 / temperature)``, renormalised (``alpha``, or 1 where the row has no label). Their sum at
    temperature 1 is ``blend_targets``."""
    teacher_probs = np.asarray(teacher_probs, dtype=np.float64)
    hard, has = hard_labels(labels, teacher_probs)
    soft = teacher_probs ** (1.0 / temperature)
    soft /= soft.sum(1, keepdims=True)
    weight = np.where(has, alpha, 1.0)[:, None]
    return ((1.0 - weight) * hard).astype(np.float32), (weight * soft).astype(np.float32)


def one_hot(labels: Sequence[int], k: int) -> np.ndarray:
    y = np.asarray(labels, dtype=np.int64)
    out = np.zeros((len(y), k), dtype=np.float32)
    out[np.arange(len(y)), y] = 1.0
    return out
