"""Augmented texts for distillation (training/augment.py): hand-computed variants, the development texts kept out,
embedding neighbours of a tiny encoder with embeddings set by hand, and the teacher file's augmented rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.augment import SOURCE, Augmentation, augment, embedding_neighbours, variant
from training.data import Unlabelled

SPANS = Augmentation(variants=10, p_ngram=1.0, max_ngram=1, p_drop=0.0, p_replace=0.0)


def test_spans_of_one_word_give_each_word_once_and_never_the_text():
    assert sorted(augment(["good movie", "bad plot"], SPANS)) == ["bad", "good", "movie", "plot"]
    assert augment(["fine"], SPANS) == []  # a one-word text has no shorter span and is not its own variant


def test_every_word_dropped_leaves_nothing_to_keep():
    assert augment(["good movie"], Augmentation(p_ngram=0.0, p_drop=1.0, p_replace=0.0)) == []


def test_replacement_takes_a_neighbour_whatever_the_case():
    aug = Augmentation(variants=3, p_ngram=0.0, p_drop=0.0, p_replace=1.0)
    assert augment(["Good good"], aug, {"good": ["great"]}) == ["great great"]


def test_a_word_without_neighbours_is_replaced_by_a_word_of_the_texts():
    aug = Augmentation(variants=5, p_ngram=0.0, p_drop=0.0, p_replace=1.0)
    out = augment(["a b", "b c"], aug)
    assert out and all(set(v.split()) <= {"a", "b", "c"} and v not in ("a b", "b c") for v in out)


def test_blocked_texts_are_never_produced_case_and_spacing_aside():
    out = augment(["good movie", "bad plot"], SPANS, blocked={"movie", "bad"})
    assert sorted(out) == ["good", "plot"]


def test_variants_are_distinct_capped_and_fixed_by_the_seed():
    texts = ["the movie was very good and the plot was fun", "a dull and tired plot"]
    aug = Augmentation(variants=4, seed=3)
    first, second = augment(texts, aug), augment(texts, aug)
    assert first == second and len(first) == len(set(first)) <= 8
    assert augment(texts, Augmentation(variants=4, seed=4)) != first


def test_a_span_is_consecutive_words_of_the_text():
    rng = np.random.default_rng(0)
    words = "one two three four five six".split()
    aug = Augmentation(p_ngram=1.0, max_ngram=3)
    for _ in range(50):
        span = variant(words, rng, aug, {}, [], np.array([]))
        n = len(span.split())
        assert 1 <= n <= 3 and span in {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


@pytest.mark.parametrize("kwargs, message", [
    ({"variants": -1}, "variants must be >= 0"),
    ({"p_drop": 1.5}, r"p_drop must be in \[0, 1\]"),
    ({"p_drop": 0.6, "p_replace": 0.6}, "at most 1"),
    ({"max_ngram": 0}, "max_ngram must be >= 1"),
])
def test_bad_settings_say_what_was_expected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Augmentation(**kwargs)


@pytest.fixture(scope="module")
def encoder_with_two_word_pairs(tmp_path_factory) -> Path:
    """A tiny BERT whose input embeddings put good next to great and bad next to awful."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("pairs")
    words = ["good", "great", "bad", "awful"]
    vocab = folder.parent / "pairs_vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, "##ly"]) + "\n")
    config = BertConfig(vocab_size=10, hidden_size=4, num_hidden_layers=1, num_attention_heads=1,
                        intermediate_size=8, max_position_embeddings=16)
    model = BertModel(config)
    with torch.no_grad():
        table = model.get_input_embeddings().weight
        table[5:9] = torch.tensor([[1.0, 0.1, 0, 0], [1.0, 0.2, 0, 0], [0, 0, 1.0, 0.1], [0, 0, 1.0, 0.2]])
    model.save_pretrained(folder)
    BertTokenizer(vocab=str(vocab)).save_pretrained(folder)
    return folder


def test_embedding_neighbours_are_the_nearest_whole_words(encoder_with_two_word_pairs):
    found = embedding_neighbours(encoder_with_two_word_pairs, ["Good", "great", "bad", "awful", "unknown", "ly", "3"],
                                 k=1)
    assert found == {"good": ["great"], "great": ["good"], "bad": ["awful"], "awful": ["bad"]}
    assert len(embedding_neighbours(encoder_with_two_word_pairs, ["good", "great", "bad"], k=8)["good"]) == 2


def test_the_teacher_file_gets_variants_but_no_development_text(tmp_path, encoder_with_two_word_pairs):
    from training import teacher

    sst2 = tmp_path / "sst2"
    sst2.mkdir()
    (sst2 / "train.tsv").write_text("sentence\tlabel\ngood movie\t1\nbad plot\t0\n")
    (sst2 / "dev.tsv").write_text("sentence\tlabel\nplot\t0\n")
    dev = tmp_path / "messages_dev.tsv"
    dev.write_text("id\tsource\tlabel\ttext\nd1\tsms\tneutral\tMovie\n")
    data = Unlabelled(["good movie", "bad plot"], ["sst2", "sst2"])
    out = teacher.with_variants(data, SPANS, str(encoder_with_two_word_pairs), sst2, [dev])
    assert out.texts[:2] == data.texts and out.sources[:2] == data.sources
    assert sorted(out.texts[2:]) == ["bad", "good"] and out.sources[2:] == [SOURCE, SOURCE]


def test_augmented_rows_count_as_texts_without_a_label(tmp_path):
    """The student trains on a teacher file's augmented rows with the teacher's targets alone."""
    from training.distill import read_teacher
    from training.teacher import write_teacher_file

    path = tmp_path / "t.parquet"
    probs = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]], dtype=np.float32)
    write_teacher_file(path, ["good movie", "movie"], ["sst2", SOURCE], probs)
    read = read_teacher(path)
    assert read.message_texts == ["movie"]
    np.testing.assert_allclose(read.get("movie"), probs[1])
