"""Augmented texts for distillation: perturbed copies of the training texts, labelled by the teacher, so that a small
student learns the teacher's judgement around the training texts and not only at them.

The perturbations follow the task-specific distillation of Tang et al. (2019, "Distilling Task-Specific Knowledge
from BERT into Simple Neural Networks", section 3.2), with a word's embedding neighbours in place of their
part-of-speech-guided replacement (no tagger is at hand offline; TinyBERT uses word vectors the same way). Each
variant of a text is, with probability ``p_ngram``, a random span of 1 to ``max_ngram`` of its words; otherwise each
word in turn is dropped with probability ``p_drop``, replaced with probability ``p_replace`` (by one of its
``neighbours``, or where it has none by a word drawn from the texts' own word frequencies), or kept. A variant equal
to its text, to another variant, to a training text or to a blocked text (a development set's) is not kept, so no
development text enters training through this door.

    python -m training.teacher --model MODEL_DIR --out teacher.parquet --augment 10 --augment-base MINILM_DIR

labels the training texts and their augmented variants in one file (source ``augmented``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from training.data import text_key

SOURCE = "augmented"


@dataclass(frozen=True)
class Augmentation:
    """How many variants each text gets and how they are made (probabilities per variant and per word)."""

    variants: int = 10
    p_ngram: float = 0.25
    max_ngram: int = 5
    p_drop: float = 0.1
    p_replace: float = 0.1
    seed: int = 42

    def __post_init__(self) -> None:
        if self.variants < 0:
            raise ValueError(f"variants must be >= 0, got {self.variants}")
        for name in ("p_ngram", "p_drop", "p_replace"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.p_drop + self.p_replace > 1.0:
            raise ValueError(f"p_drop + p_replace must be at most 1, got {self.p_drop + self.p_replace}")
        if self.max_ngram < 1:
            raise ValueError(f"max_ngram must be >= 1, got {self.max_ngram}")


def variant(words: Sequence[str], rng: np.random.Generator, aug: Augmentation,
            neighbours: Mapping[str, Sequence[str]], vocabulary: Sequence[str], cdf: np.ndarray) -> str:
    """One perturbed copy of a text given as its words; ``cdf`` is the cumulative share of each ``vocabulary``
    word among the texts' words."""
    if len(words) > 1 and rng.random() < aug.p_ngram:
        n = int(rng.integers(1, min(aug.max_ngram, len(words)) + 1))
        start = int(rng.integers(0, len(words) - n + 1))
        return " ".join(words[start:start + n])
    out = []
    for word in words:
        u = rng.random()
        if u < aug.p_drop:
            continue
        if u < aug.p_drop + aug.p_replace:
            choices = neighbours.get(word.casefold())
            if choices:
                word = choices[int(rng.integers(0, len(choices)))]
            elif vocabulary:
                word = vocabulary[min(int(np.searchsorted(cdf, rng.random(), side="right")), len(cdf) - 1)]
        out.append(word)
    return " ".join(out)


def augment(texts: Sequence[str], aug: Augmentation, neighbours: Mapping[str, Sequence[str]] | None = None,
            blocked: Iterable[str] = ()) -> list[str]:
    """Up to ``aug.variants`` distinct variants of each text, in text order; none whose :func:`text_key` is a
    text's, another variant's or in ``blocked`` (keys of texts that must not be trained on)."""
    neighbours = neighbours or {}
    counts = Counter(w for t in texts for w in t.split())
    vocabulary = list(counts)
    cdf = np.cumsum(np.asarray([counts[w] for w in vocabulary], dtype=np.float64))
    cdf = cdf / cdf[-1] if len(cdf) else cdf
    seen = set(blocked) | {text_key(t) for t in texts}
    rng = np.random.default_rng(aug.seed)
    out = []
    for text in texts:
        words = text.split()
        if not words:
            continue
        kept = 0
        # A short text has few distinct variants; the cap on attempts keeps it from looping on them.
        for _attempt in range(2 * aug.variants):
            if kept == aug.variants:
                break
            candidate = variant(words, rng, aug, neighbours, vocabulary, cdf)
            key = text_key(candidate)
            if key and key not in seen:
                seen.add(key)
                out.append(candidate)
                kept += 1
    return out


def embedding_neighbours(base_dir: str | Path, words: Iterable[str], k: int = 8) -> dict[str, list[str]]:
    """Each word that is one whole token of the encoder at ``base_dir`` -> its ``k`` nearest such words by the
    cosine of their input embeddings (the encoder's own sense of which words are alike)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from screener.classifiers import hf

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    with hf.quiet_transformers():
        model = AutoModel.from_pretrained(str(base_dir), local_files_only=True)
    vocab = tokenizer.get_vocab()
    wanted = sorted({w.casefold() for w in words if w.isalpha()})
    kept = [w for w in wanted if w in vocab]
    if len(kept) < 2:
        return {}
    table = model.get_input_embeddings().weight.detach().float()
    vectors = torch.nn.functional.normalize(table[[vocab[w] for w in kept]], dim=1)
    k = min(k, len(kept) - 1)
    result: dict[str, list[str]] = {}
    for start in range(0, len(kept), 4096):
        sims = vectors[start:start + 4096] @ vectors.T
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + start] = -2.0  # a word is not its own neighbour
        top = sims.topk(k, dim=1).indices
        for i, row in enumerate(top.tolist()):
            result[kept[start + i]] = [kept[j] for j in row]
    return result
