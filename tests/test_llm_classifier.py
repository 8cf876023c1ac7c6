"""The LLM label-token classifier on a tiny random-weight Llama built from a config (no downloads)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from screener.classifiers.llm import BaseRef, load_model_and_tokenizer, model_id_for  # noqa: E402
from screener.classifiers.registry import load_classifier  # noqa: E402
from screener.errors import ModelError  # noqa: E402
from screener.prompt import alpaca_prompt  # noqa: E402

WORDS = ("below is an instruction that describes a task paired with input provides further context write response "
         "appropriately completes the request classify sentiment of following text negative positive good bad "
         "movie great awful plot").split()


def make_tiny_llama(folder, seed: int = 0):
    """A 2-layer Llama with a word-level tokenizer that knows the Alpaca prompt's words and the label words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for token in WORDS + list("#:.,"):
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_adapter_model(tmp_path, seed: int = 1, instruction: str | None = None):
    """A model folder: manifest + a LoRA adapter with non-zero random weights on the tiny base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = make_tiny_llama(tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.3)
    folder = tmp_path / "model"
    peft_model.save_pretrained(folder / "adapter")
    manifest = {"kind": "llm-labeltoken", "base": str(base), "adapter": "adapter", "name": "tiny"}
    if instruction:
        manifest["instruction"] = instruction
    (folder / "screener_model.json").write_text(json.dumps(manifest))
    return folder, base


def reference_p_negative(folder, texts):
    """One unpadded full forward per text with the adapter merged: softmax over the two label logits."""
    manifest = json.loads((folder / "screener_model.json").read_text())
    model, tokenizer, (neg, pos) = load_model_and_tokenizer(folder, manifest, device="cpu")
    out = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(alpaca_prompt(text), return_tensors="pt")["input_ids"]
            logits = model(input_ids=ids).logits[0, -1]
            out.append(torch.softmax(logits[[neg, pos]], dim=-1)[0].item())
    return np.array(out)


def test_padded_batches_equal_unpadded_single_forwards(tmp_path):
    folder, _ = make_adapter_model(tmp_path)
    clf = load_classifier(str(folder), device="cpu")
    texts = ["good", "bad movie", "a great great plot with an awful awful awful ending", "", "movie"]
    clf.batch_size = 3  # several batches of mixed lengths, so right padding is exercised
    got = clf.predict_negative(texts)
    assert got.dtype == np.float32 and got.shape == (5,)
    np.testing.assert_allclose(got, reference_p_negative(folder, texts), atol=1e-5)
    assert np.ptp(got) > 1e-4  # the random adapter makes the texts differ, so order mistakes would show


def test_adapter_is_merged_into_predictions(tmp_path):
    folder, base = make_adapter_model(tmp_path)
    with_adapter = load_classifier(str(folder), device="cpu").predict_negative(["good movie", "bad"])
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "screener_model.json").write_text(json.dumps({"kind": "llm-labeltoken", "base": str(base)}))
    without = load_classifier(str(plain), device="cpu").predict_negative(["good movie", "bad"])
    assert not np.allclose(with_adapter, without, atol=1e-4)


def test_label_token_ids_are_the_label_words_first_tokens(tmp_path):
    folder, _ = make_adapter_model(tmp_path)
    manifest = json.loads((folder / "screener_model.json").read_text())
    _, tokenizer, label_ids = load_model_and_tokenizer(folder, manifest, device="cpu")
    assert label_ids == (tokenizer.convert_tokens_to_ids("negative"), tokenizer.convert_tokens_to_ids("positive"))


def test_model_id_is_stable_and_tracks_adapter_and_instruction(tmp_path):
    folder, base = make_adapter_model(tmp_path)
    first = load_classifier(str(folder), device="cpu").model_id
    assert first == load_classifier(str(folder), device="cpu").model_id
    assert len(first) == 16
    identity = BaseRef(str(base)).identity
    assert model_id_for(identity, folder / "adapter", "Another instruction.", ("negative", "positive")) != first
    other, _ = make_adapter_model(tmp_path / "other", seed=2)
    assert load_classifier(str(other), device="cpu").model_id != first


def test_base_hash_mismatch_is_refused(tmp_path):
    folder, _ = make_adapter_model(tmp_path)
    manifest = json.loads((folder / "screener_model.json").read_text())
    manifest["base_sha256"] = "0" * 64
    (folder / "screener_model.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="trained on other weights"):
        load_classifier(str(folder), device="cpu")


def test_unknown_base_says_what_is_expected(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "screener_model.json").write_text(json.dumps({"kind": "llm-labeltoken", "base": "./nowhere"}))
    with pytest.raises(ModelError, match="pypi:PACKAGE"):
        load_classifier(str(folder), device="cpu")


def test_long_texts_are_cut_to_max_text_tokens(tmp_path):
    folder, _ = make_adapter_model(tmp_path)
    manifest = json.loads((folder / "screener_model.json").read_text())
    manifest["max_text_tokens"] = 4
    (folder / "screener_model.json").write_text(json.dumps(manifest))
    clf = load_classifier(str(folder), device="cpu")
    long_text = "good bad good bad " * 50
    np.testing.assert_allclose(clf.predict_negative([long_text]), clf.predict_negative(["good bad good bad"]),
                               atol=1e-6)
    assert clf.token_lengths(["good bad movie"]) == [3]


def test_predict_proba_columns_follow_the_label_words(tmp_path):
    from screener.classifiers.llm import LabelTokenClassifier

    folder, _ = make_adapter_model(tmp_path)
    clf = load_classifier(str(folder), device="cpu")
    assert isinstance(clf, LabelTokenClassifier)  # the reference classifier off CUDA
    assert clf.labels == ("negative", "positive") and not clf.sizes_own_batches and clf.token_budget == 4096
    texts = ["good", "bad movie", ""]
    proba = clf.predict_proba(texts)
    assert proba.dtype == np.float32 and proba.shape == (3, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(clf.predict_negative(texts), proba[:, 0])


def test_three_label_words_give_three_columns(tmp_path):
    folder, _ = make_adapter_model(tmp_path)
    manifest = json.loads((folder / "screener_model.json").read_text())
    manifest["label_words"] = ["positive", "negative", "awful"]
    (folder / "screener_model.json").write_text(json.dumps(manifest))
    clf = load_classifier(str(folder), device="cpu")
    model, tokenizer, label_ids = load_model_and_tokenizer(folder, manifest, device="cpu")
    texts = ["good movie", "a great plot with an awful ending"]
    with torch.no_grad():
        expected = [torch.softmax(model(input_ids=tokenizer(alpaca_prompt(t), return_tensors="pt")["input_ids"])
                                  .logits[0, -1, list(label_ids)], -1).numpy() for t in texts]
    assert clf.labels == ("positive", "negative", "awful") and clf.negative_index == 1
    np.testing.assert_allclose(clf.predict_proba(texts), np.array(expected), atol=1e-5)
    np.testing.assert_allclose(clf.predict_negative(texts), np.array(expected)[:, 1], atol=1e-5)


def test_label_words_without_negative_are_refused(tmp_path):
    folder, _ = make_adapter_model(tmp_path)
    manifest = json.loads((folder / "screener_model.json").read_text())
    manifest["label_words"] = ["good", "bad"]
    (folder / "screener_model.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="one of them 'negative'"):
        load_classifier(str(folder), device="cpu")


def test_loading_a_model_shows_no_progress_bar(tmp_path, capfd):
    from transformers import AutoModelForCausalLM

    base = make_tiny_llama(tmp_path / "base")
    (tmp_path / "screener_model.json").write_text(json.dumps({"kind": "llm-labeltoken", "base": str(base)}))
    capfd.readouterr()
    AutoModelForCausalLM.from_pretrained(base)
    assert "Loading weights" in capfd.readouterr().err  # what transformers shows by default
    load_classifier(str(tmp_path), device="cpu")
    assert "Loading weights" not in capfd.readouterr().err
