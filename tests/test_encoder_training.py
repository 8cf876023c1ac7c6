"""training.encoder on a tiny random BERT and a few dozen separable examples; the output loads as a classifier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from screener.classifiers.base import BINARY_LABELS
from screener.classifiers.registry import MANIFEST, load_classifier
from training import encoder
from training.distill import blend_targets, read_teacher, split_targets, teacher_targets

POSITIVE = ["good", "great", "fun", "love"]
NEGATIVE = ["bad", "awful", "boring", "hate"]
WORDS = POSITIVE + NEGATIVE + ["the", "movie", "was", "is", "very", "plot"]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("base")
    vocab = folder.parent / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n", encoding="utf-8")
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(folder))  # a base without a head, like all-MiniLM-L6-v2
    BertTokenizer(vocab=str(vocab)).save_pretrained(str(folder))
    return folder


def sentence(rng: np.random.Generator, words: list[str]) -> str:
    return " ".join(rng.choice(["the movie was", "very", "the plot is"]).split() + list(rng.choice(words, 2)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 32), ("dev", 8)):
        rows = [(sentence(rng, POSITIVE if i % 2 else NEGATIVE), i % 2) for i in range(n)]
        lines = ["sentence\tlabel"] + [f"{text}\t{label}" for text, label in rows]
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


RECIPE = {"kind": "encoder", "method": "lora", "epochs": 15, "batch_size": 8, "learning_rate": 3e-2,
          "warmup_ratio": 0.0, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "max_length": 16,
          "target_modules": ["query", "value", "output.dense", "intermediate.dense"]}


def dev_accuracy(folder: Path, data_dir: Path) -> float:
    """Accuracy on dev.tsv of the folder loaded back through the registry, as the scan would load it."""
    dev = pl.read_csv(data_dir / "dev.tsv", separator="\t", quote_char=None)
    p_negative = load_classifier(str(folder), device="cpu").predict_negative(dev["sentence"].to_list())
    return float(np.mean((p_negative < 0.5) == (dev["label"].to_numpy() == 1)))


@pytest.fixture(scope="module")
def lora_out(tiny_base, data_dir, tmp_path_factory) -> Path:
    return encoder.train(str(tiny_base), RECIPE, str(data_dir), str(tmp_path_factory.mktemp("lora") / "out"))


def test_lora_training_writes_a_loadable_adapter_folder_that_learned_the_labels(lora_out, tiny_base, data_dir):
    out = lora_out
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["kind"] == "hf-seqcls" and manifest["adapter"] == "adapter"
    assert manifest["base"] == str(tiny_base.resolve())
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert manifest["training"]["steps"] == 15 * 4
    assert len(manifest["training"]["dev_history"]) == 15
    assert dev_accuracy(out, data_dir) == manifest["training"]["dev"]["accuracy"] == 1.0


def test_training_can_continue_from_an_earlier_adapter(lora_out, tiny_base, data_dir, tmp_path):
    # One step at a negligible learning rate: the result is the earlier adapter, not a fresh one (which would
    # sit at chance on dev).
    recipe = {**RECIPE, "init_adapter": str(lora_out), "learning_rate": 1e-9}
    out = encoder.train(str(tiny_base), recipe, str(data_dir), str(tmp_path / "continued"), max_steps=1)
    assert dev_accuracy(out, data_dir) == 1.0
    with pytest.raises(ValueError, match="does not fit"):
        encoder.train(str(tiny_base), {**recipe, "lora_r": 8}, str(data_dir), str(tmp_path / "bad"), max_steps=1)


def test_full_fine_tune_writes_a_checkpoint_folder_and_stops_at_max_steps(tiny_base, data_dir, tmp_path):
    recipe = {**RECIPE, "method": "full", "learning_rate": 1e-2}
    out = encoder.train(str(tiny_base), recipe, str(data_dir), str(tmp_path / "full"), max_steps=30)
    manifest = json.loads((out / MANIFEST).read_text())
    assert "base" not in manifest and (out / "config.json").is_file()
    assert manifest["training"]["steps"] == 30
    assert dev_accuracy(out, data_dir) == 1.0


def test_layers_fine_tune_ships_every_tensor_but_the_embeddings_over_the_base(tiny_base, data_dir, tmp_path):
    from safetensors.torch import load_file

    from screener.classifiers import hf

    recipe = {**RECIPE, "method": "layers", "learning_rate": 1e-2}
    out = encoder.train(str(tiny_base), recipe, str(data_dir), str(tmp_path / "layers"))
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["base"] == str(tiny_base.resolve()) and manifest["weights"] == "weights.safetensors"
    assert not (out / "config.json").exists()
    saved = load_file(str(out / "weights.safetensors"))
    assert saved and not any(".embeddings." in name for name in saved)
    assert {"classifier.weight", "bert.encoder.layer.0.attention.self.query.weight"} <= set(saved)
    assert {str(t.dtype) for t in saved.values()} == {"torch.float16"}
    assert dev_accuracy(out, data_dir) == 1.0
    # The trained tensors are what makes it a different model: the id follows them.
    assert hf.manifest_model_id(out, manifest) != hf.manifest_model_id(out, {**manifest, "weights": None})


def test_a_weights_file_that_does_not_fit_the_base_is_a_clear_error(tiny_base, data_dir, tmp_path):
    import torch
    from safetensors.torch import save_file

    from screener.errors import ModelError

    recipe = {**RECIPE, "method": "layers", "learning_rate": 1e-2}
    out = encoder.train(str(tiny_base), recipe, str(data_dir), str(tmp_path / "layers"), max_steps=1)
    save_file({"classifier.weight": torch.zeros(3, 3, dtype=torch.float16)}, str(out / "weights.safetensors"))
    with pytest.raises(ModelError, match=r"'classifier.weight' \(3, 3\) does not fit the base model \(the base's is \(2, 16\)\)"):
        load_classifier(str(out), device="cpu")
    (out / "weights.safetensors").unlink()
    with pytest.raises(ModelError, match="names the weights file weights.safetensors, which is missing"):
        load_classifier(str(out), device="cpu")


def test_distillation_follows_the_teacher_over_the_hard_labels(tiny_base, data_dir, tmp_path):
    train = pl.read_csv(data_dir / "train.tsv", separator="\t", quote_char=None)
    # A teacher that contradicts every label: with distill_alpha = 1 the student must side with the teacher.
    teacher = tmp_path / "teacher.parquet"
    pl.DataFrame({"text": train["sentence"], "p_negative": train["label"].cast(pl.Float64)}).write_parquet(teacher)
    recipe = {**RECIPE, "teacher": str(teacher), "distill_alpha": 1.0}
    out = encoder.train(str(tiny_base), recipe, str(data_dir), str(tmp_path / "distilled"))
    assert dev_accuracy(out, data_dir) == 0.0


def test_blend_targets_mixes_teacher_and_hard_label():
    targets = blend_targets(np.array([[0.8, 0.2], [0.2, 0.8]], dtype=np.float32), [1, 0], alpha=0.25)
    # row 0: 0.25 * 0.8 + 0.75 * 0 = 0.2 negative; row 1: 0.25 * 0.2 + 0.75 * 1 = 0.8 negative
    np.testing.assert_allclose(targets, [[0.2, 0.8], [0.8, 0.2]], atol=1e-6)


def test_split_targets_soften_the_teacher_and_weigh_both_terms():
    hard, soft = split_targets(np.array([[0.8, 0.2], [0.9, 0.1]]), [1, -1], alpha=0.25, temperature=2.0)
    # row 0: sqrt(0.8) : sqrt(0.2) = 2 : 1, weighted 0.25; the label (positive) weighted 0.75
    # row 1: sqrt(0.9) : sqrt(0.1) = 3 : 1, weighted 1 (no label)
    np.testing.assert_allclose(soft, [[0.25 * 2 / 3, 0.25 / 3], [0.75, 0.25]], atol=1e-6)
    np.testing.assert_allclose(hard, [[0.0, 0.75], [0.0, 0.0]], atol=1e-6)
    hard1, soft1 = split_targets(np.array([[0.8, 0.2]]), [0], alpha=0.25, temperature=1.0)
    np.testing.assert_allclose(hard1 + soft1, blend_targets(np.array([[0.8, 0.2]]), [0], alpha=0.25), atol=1e-6)


def test_distillation_at_a_temperature_still_follows_the_teacher(tiny_base, data_dir, tmp_path):
    train = pl.read_csv(data_dir / "train.tsv", separator="\t", quote_char=None)
    teacher = tmp_path / "teacher.parquet"
    # A teacher that contradicts every label, sure but not certain, so softening changes its targets.
    p_negative = (train["label"].cast(pl.Float64) * 0.8 + 0.1)
    pl.DataFrame({"text": train["sentence"], "p_negative": p_negative}).write_parquet(teacher)
    recipe = {**RECIPE, "teacher": str(teacher), "distill_alpha": 1.0, "distill_temperature": 2.0}
    out = encoder.train(str(tiny_base), recipe, str(data_dir), str(tmp_path / "distilled"))
    assert dev_accuracy(out, data_dir) == 0.0
    from screener.errors import ConfigError
    with pytest.raises(ConfigError, match="distill_temperature"):
        encoder.train(str(tiny_base), {**recipe, "distill_temperature": 0.5}, str(data_dir), str(tmp_path / "bad"))


def test_teacher_targets_average_duplicates_and_fall_back_to_labels(tmp_path):
    path = tmp_path / "t.csv"
    pl.DataFrame({"text": ["a", "a", "b"], "p_negative": [0.2, 0.4, 0.9]}).write_csv(path)
    teacher = read_teacher(path)
    # a two-way teacher: neutral 0, positive the rest
    np.testing.assert_allclose(teacher.probs["a"], [0.3, 0.0, 0.7], atol=1e-6)
    texts = ["a", "b"] * 10 + ["unseen"]
    targets = teacher_targets(teacher, texts, [1] * 21, BINARY_LABELS)
    np.testing.assert_allclose(targets[0], [0.3, 0.7], atol=1e-6)
    np.testing.assert_allclose(targets[1], [0.9, 0.1], atol=1e-6)
    np.testing.assert_allclose(targets[-1], [0.0, 1.0])  # the hard label: positive
    with pytest.raises(ValueError, match="covers 2 of 3"):
        teacher_targets(teacher, ["a", "b", "unseen"], [1, 1, 1], BINARY_LABELS)


def test_shipped_minilm_recipes_validate_as_encoder_recipes():
    from training.recipes import ENCODER, load_recipe

    for name in ("minilm", "minilm-distill", "minilm-3way-distill", "mpnet-3way"):
        recipe = load_recipe(name)
        assert recipe["kind"] == "encoder" and recipe["method"] == "lora"
        assert list(recipe) == [*ENCODER.keys, "name"]


def test_a_recipe_built_in_code_is_validated_before_training(tiny_base, data_dir, tmp_path):
    from screener.errors import ConfigError

    with pytest.raises(ConfigError, match="'method' is 'adapter'; expected one of lora, full, layers"):
        encoder.train(str(tiny_base), {**RECIPE, "method": "adapter"}, str(data_dir), str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="unknown key.*lora_rank"):
        encoder.train(str(tiny_base), {**RECIPE, "lora_rank": 4}, str(data_dir), str(tmp_path / "b"))
    with pytest.raises(ConfigError, match="has kind 'llm-lora'; expected 'encoder'"):
        encoder.train(str(tiny_base), {**RECIPE, "kind": "llm-lora"}, str(data_dir), str(tmp_path / "c"))
    assert not any(tmp_path.iterdir())
