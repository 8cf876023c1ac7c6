"""The classifier protocol the scan pipeline depends on, and a base class that implements its common parts."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

NEGATIVE = "negative"
NEUTRAL = "neutral"
POSITIVE = "positive"
BINARY_LABELS = (NEGATIVE, POSITIVE)
THREE_WAY_LABELS = (NEGATIVE, NEUTRAL, POSITIVE)


@runtime_checkable
class Classifier(Protocol):
    """Scores texts with one probability per class.

    ``model_id`` is stable across processes and machines for the same weights, adapter and prompt (a content
    hash), so that scores written by one run are recognised by the next.
    ``name`` is the human name shown in reports (``default``, ``smollm2-sst2`` or a folder path).
    ``labels`` names the classes, in the column order of :meth:`predict_proba`; it always holds ``negative``.
    A model that knows only two classes scores ``negative`` against the rest.

    Batching hints:
    ``sizes_own_batches`` is true when the classifier sorts, packs and sizes batches itself (the GPU engine, the
    ONNX Runtime backend): the scan then hands it a whole window in one call instead of token-budget batches.
    ``tokenizes_ahead`` is true when the scan should still call ``token_lengths`` on each window on its reading
    thread for a classifier that sizes its own batches: it keeps the token ids, so its tokenizing overlaps the
    scoring of the window before.
    ``min_window_rows`` is the fewest rows per call that keep it busy (0: no minimum).
    ``token_budget`` is the padded tokens per batch the scan packs for it when it does not size its own batches.
    """

    model_id: str
    name: str
    labels: tuple[str, ...]
    sizes_own_batches: bool
    tokenizes_ahead: bool
    min_window_rows: int
    token_budget: int

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Return float32 probabilities of shape ``(len(texts), len(labels))``, rows summing to 1, input order."""
        ...

    def predict_negative(self, texts: Sequence[str]) -> np.ndarray:
        """Return float32 P(negative) in [0, 1], one per text, in input order."""
        ...

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token counts used to sort a window of texts by length before batching."""
        ...

    def close(self) -> None:
        """Release processes, threads and device memory; safe to call twice. The encoder classifiers (torch and
        ONNX) also let their model go, after which they score nothing more (a ModelError says so)."""
        ...


class ClassifierBase:
    """Common parts of a classifier: the negative column, the batching defaults and the context manager.

    A subclass sets ``model_id``, ``name`` and ``labels`` and implements ``predict_proba`` and
    ``token_lengths``; one that holds processes or devices overrides ``close``.
    """

    model_id: str
    name: str
    labels: tuple[str, ...] = BINARY_LABELS
    sizes_own_batches: bool = False
    tokenizes_ahead: bool = False
    min_window_rows: int = 0
    token_budget: int = 8192

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        raise NotImplementedError

    @property
    def negative_index(self) -> int:
        return self.labels.index(NEGATIVE)

    def predict_negative(self, texts: Sequence[str]) -> np.ndarray:
        return np.ascontiguousarray(self.predict_proba(texts)[:, self.negative_index], dtype=np.float32)

    def close(self) -> None:
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def binary_proba(p_negative: np.ndarray) -> np.ndarray:
    """Two columns (negative, positive) from P(negative)."""
    p = np.asarray(p_negative, dtype=np.float32).reshape(-1)
    return np.stack([p, 1.0 - p], axis=1)
