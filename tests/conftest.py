"""Shared fixtures: small archives with known content and a deterministic keyword classifier.

The keyword classifier is a test double for the pipeline tests, where what matters is which messages are negative
and the engine's bookkeeping, not a model's accuracy; the real models have their own tests.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

import duckdb
import numpy as np
import pytest

from screener.classifiers.base import THREE_WAY_LABELS, ClassifierBase, binary_proba

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class KeywordClassifier(ClassifierBase):
    """P(negative) = 0.9 when the text contains 'bad', else 0.1; a token is a word. Counts its calls and closes."""

    name = "keyword-test"

    def __init__(self, word: str = "bad") -> None:
        self.word = word
        self.model_id = hashlib.sha256(f"keyword:{word}".encode()).hexdigest()[:16]
        self.calls = 0
        self.closed = 0

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        return binary_proba(np.array([0.9 if self.word in t else 0.1 for t in texts], dtype=np.float32))

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def keyword_classifier() -> KeywordClassifier:
    return KeywordClassifier()


class ThreeWayKeywordClassifier(ClassifierBase):
    """A three-way double: a text with the word 'bad' is negative, one with 'ok' neutral, any other positive, with the
    probabilities of ``PROBA``. A neutral text's P(negative) (0.40) is above P(positive): a rule that read "not
    positive" as negative would count it."""

    name = "three-way-keyword-test"
    labels = THREE_WAY_LABELS
    PROBA = {"negative": (0.80, 0.15, 0.05), "neutral": (0.40, 0.55, 0.05), "positive": (0.05, 0.15, 0.80)}

    def __init__(self) -> None:
        self.model_id = hashlib.sha256(b"three-way-keyword").hexdigest()[:16]
        self.calls = 0

    @staticmethod
    def expected_label(text: str) -> str:
        words = text.split()
        return "negative" if "bad" in words else "neutral" if "ok" in words else "positive"

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        return np.array([self.PROBA[self.expected_label(t)] for t in texts], dtype=np.float32).reshape(-1, 3)

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]


@pytest.fixture
def three_way_classifier() -> ThreeWayKeywordClassifier:
    return ThreeWayKeywordClassifier()


AS_OF = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def write_archive(path: Path, rows: list[tuple], tz: bool = True) -> Path:
    """rows: (message_id, user_id, sent_at, text). sent_at as datetime."""
    con = duckdb.connect(str(path))
    ts_type = "TIMESTAMPTZ" if tz else "TIMESTAMP"
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"CREATE TABLE messages (message_id VARCHAR, user_id VARCHAR, sent_at {ts_type}, text VARCHAR)")
    if rows:
        con.executemany("INSERT INTO messages VALUES (?, ?, ?, ?)", rows)
    con.close()
    return path


def score_counts(db: Path) -> tuple[int, int]:
    """(scores, distinct scored message ids) in a results database: equal when nothing was scored twice."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT count(*), count(DISTINCT message_id) FROM screener_scores").fetchone()
    finally:
        con.close()


def generated_rows(n_users: int = 12, per_user: int = 10, seed: int = 7, start_id: int = 0) -> list[tuple]:
    """Users u00.. with messages over the 10 days before AS_OF; every third user writes mostly 'bad' messages."""
    rng = np.random.default_rng(seed)
    rows = []
    mid = start_id
    for u in range(n_users):
        negative_share = 0.8 if u % 3 == 0 else 0.1
        for _ in range(per_user):
            when = AS_OF - timedelta(hours=float(rng.uniform(1, 240)))
            text = "this is bad news" if rng.random() < negative_share else "all good here"
            rows.append((f"m{mid:06d}", f"u{u:02d}", when, text))
            mid += 1
    return rows


@pytest.fixture
def archive(tmp_path) -> Path:
    return write_archive(tmp_path / "messages.duckdb", generated_rows())


TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(
    set("this is bad news all good here hello world the a an and or not very great awful support help".split())
) + list("abcdefghijklmnopqrstuvwxyz0123456789")


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A random-weight 1-layer BERT sequence classifier with a WordPiece tokenizer, as a screener model folder."""
    import json

    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(TINY_VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=2,
                        initializer_range=1.0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "screener_model.json").write_text(
        json.dumps({"kind": "hf-seqcls", "name": "tiny-random", "max_length": 32}), encoding="utf-8")
    return folder


SPLIT_TEXTS = ("this is bad news", "all good here")


def center_between(folder: Path, texts: Sequence[str]) -> Path:
    """Shift the head's bias of a tiny model folder so that its decision boundary lies halfway between two texts:
    one of them gets P(negative) above 1/2, the top class, and the other below, whatever the random weights."""
    import torch
    from transformers import BertForSequenceClassification

    from screener.classifiers.registry import load_classifier

    p = load_classifier(str(folder), device="cpu").predict_negative(list(texts)).astype(np.float64)
    logits = np.log(p / (1 - p))
    assert abs(logits[0] - logits[1]) > 1e-3, "the tiny model must tell the two texts apart"
    model = BertForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        # Output 0 is negative: its logit minus the positive one moves by the same amount for every text.
        model.classifier.bias[0] -= float(logits.mean())
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return center_between(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny"), SPLIT_TEXTS)


@pytest.fixture(scope="session")
def tiny_threshold(tiny_model) -> float:
    """A negative_threshold that splits the tiny model's scores of the two texts generated_rows() uses, so one
    group of users is flagged and the other is not. A message is negative only when P(negative) is also its top
    class, which the tiny model's centred head gives one text and not the other."""
    from screener.classifiers.registry import load_classifier

    first, second = load_classifier(str(tiny_model), device="cpu").predict_negative(list(SPLIT_TEXTS))
    assert min(first, second) < 0.5 <= max(first, second)
    return float((first + second) / 2)
