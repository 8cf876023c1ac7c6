"""The classifier protocol the scan pipeline depends on."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Classifier(Protocol):
    """Scores texts with the probability that each is negative.

    ``model_id`` is stable across processes and machines for the same weights, adapter and prompt (a content
    hash), so that scores written by one run are recognised by the next.
    ``name`` is the human name shown in reports (``default``, ``smollm2-sst2`` or a folder path).
    A classifier may set ``sizes_own_batches = True`` when it sorts, packs and sizes batches itself (the GPU
    engine): the scan then hands it a whole window in one call instead of ``batch_size`` rows at a time.
    """

    model_id: str
    name: str

    def predict_negative(self, texts: Sequence[str]) -> np.ndarray:
        """Return float32 P(negative) in [0, 1], one per text, in input order."""
        ...

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token counts used to sort a window of texts by length before batching."""
        ...
