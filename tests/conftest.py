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

from screener.classifiers.base import ClassifierBase, binary_proba

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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_threshold(tiny_model) -> float:
    """A negative_threshold that splits the tiny model's scores of the two texts generated_rows() uses, so one
    group of users is flagged and the other is not, whatever the random weights."""
    from screener.classifiers.registry import load_classifier

    bad, good = load_classifier(str(tiny_model), device="cpu").predict_negative(["this is bad news", "all good here"])
    assert abs(bad - good) > 1e-4, "the tiny model must tell the two texts apart"
    return float((bad + good) / 2)
