"""Label-token training over three label words (training/llm.py, training/train.py) on a tiny random Llama."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from screener.classifiers.base import THREE_WAY_LABELS  # noqa: E402
from screener.classifiers.registry import load_classifier  # noqa: E402
from screener.errors import ConfigError  # noqa: E402
from training.llm import encode_examples, train_llm  # noqa: E402
from training.recipes import load_recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORDS = ("below is an instruction that describes a task paired with input provides further context write response "
         "appropriately completes the request classify sentiment of following text negative neutral positive "
         "good bad great awful meeting at six movie plot").split()

# negative 0, neutral 1, positive 2
TOY = [("bad movie", 0), ("awful plot", 0), ("bad awful", 0), ("meeting at six", 1), ("meeting at", 1),
       ("at six", 1), ("good movie", 2), ("great plot", 2), ("good great", 2)]


def make_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Llama with a word-level tokenizer that knows the prompt's words and the three label words."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for token in WORDS + list("#:.,()"):
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


def three_way_recipe(**changes) -> dict:
    recipe = load_recipe("qwen-3way")
    recipe.update({"backend": "peft", "batch_size": 9, "learning_rate": 1e-2, "warmup_steps": 0, "lora_r": 4,
                   "lora_alpha": 8, "messages": "", "exclude": "", **changes})
    return recipe


def test_three_label_words_train_and_write_a_three_word_manifest(tmp_path):
    base = make_tiny_llama(tmp_path / "base")
    texts, labels = zip(*TOY)
    instruction = "classify the sentiment of the following text"
    summary = train_llm(str(base), three_way_recipe(instruction=instruction), list(texts), list(labels),
                        tmp_path / "out", max_steps=40, device="cpu")
    assert summary["steps"] == 40 and summary["class_counts"] == {"negative": 3, "neutral": 3, "positive": 3}
    assert summary["backend"] == "peft" and summary["unsloth_fallback"] == "the recipe asks for PEFT"
    manifest = json.loads((tmp_path / "out" / "screener_model.json").read_text())
    assert manifest["label_words"] == ["negative", "neutral", "positive"]
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(base).convert_tokens_to_ids(["negative", "neutral", "positive"])
    assert manifest["label_token_ids"] == ids
    assert manifest["instruction"] == instruction
    classifier = load_classifier(str(tmp_path / "out"), device="cpu")
    assert tuple(classifier.labels) == THREE_WAY_LABELS
    probs = classifier.predict_proba(list(texts))
    assert probs.shape == (9, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.argmax(probs, axis=1).tolist() == list(labels)


def test_an_unsloth_load_failure_falls_back_to_peft_and_the_summary_says_why(tmp_path, monkeypatch):
    import training.llm as llm

    real = llm.load_base

    def unsloth_breaks(load_dir, recipe, device, dtype, backend):
        if backend == "unsloth":
            raise RuntimeError("no kernels for this architecture")
        return real(load_dir, recipe, device, dtype, backend)

    monkeypatch.setattr(llm, "load_base", unsloth_breaks)
    base = make_tiny_llama(tmp_path / "base")
    texts, labels = zip(*TOY)
    summary = train_llm(str(base), three_way_recipe(backend="auto"), list(texts), list(labels), tmp_path / "out",
                        max_steps=2, device="cpu")
    assert summary["backend"] == "peft"
    assert summary["unsloth_fallback"].startswith("RuntimeError: no kernels for this architecture at ")
    assert "test_threeway_llm.py" in summary["unsloth_fallback"]


def test_causal_lm_rows_end_with_the_rows_own_label_word(tmp_path):
    from transformers import AutoTokenizer

    base = make_tiny_llama(tmp_path / "base")
    tokenizer = AutoTokenizer.from_pretrained(base)
    neg, neu, pos = tokenizer.convert_tokens_to_ids(["negative", "neutral", "positive"])
    recipe = three_way_recipe(objective="causal-lm")
    rows, targets, starts = encode_examples(tokenizer, ["bad", "meeting", "good"], [0, 1, 2], recipe, "x",
                                            (neg, neu, pos))
    assert targets is None
    assert [r[s:] for r, s in zip(rows, starts)] == [[w, tokenizer.eos_token_id] for w in (neg, neu, pos)]


def test_labels_outside_the_label_words_and_words_without_negative_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="class indices into the label words"):
        train_llm(str(tmp_path / "none"), three_way_recipe(), ["a"], [3], tmp_path / "out", device="cpu")
    with pytest.raises(ConfigError, match="one of them 'negative'"):
        train_llm(str(tmp_path / "none"), three_way_recipe(label_words=["bad", "good"]), ["a"], [0],
                  tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()


def test_the_qwen_recipe_runs_from_the_command_line_on_messages_and_sst2(tmp_path):
    """``python -m training.train`` as the device script calls it, through Unsloth where it is installed."""
    base = make_tiny_llama(tmp_path / "base")
    data = tmp_path / "sst2"
    data.mkdir()
    (data / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{1 if y == 2 else 0}\n"
                                                                  for t, y in TOY if y != 1) * 2)
    messages = tmp_path / "messages.tsv"
    messages.write_text("id\tsource\tlabel\ttext\n" + "".join(
        f"m{i}\tsms\t{THREE_WAY_LABELS[y]}\t{t}\n" for i, (t, y) in enumerate(TOY)))
    dev = tmp_path / "dev.tsv"
    dev.write_text("id\tsource\tlabel\ttext\nd\tsms\tneutral\tMEETING AT SIX\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "training.train", "--base", str(base), "--recipe", "qwen-3way", "--data", str(data),
           "--output", str(out), "--max-steps", "2", "--device", "cpu", "--set", f"messages={messages}",
           "--set", f"exclude={dev}", "--set", "batch_size=4", "--set", "sst2_fraction=0.5",
           "--summary", str(tmp_path / "summary.json")]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    # half of the 12 SST-2 rows, then the 9 messages five times less the one the dev file holds
    assert summary["train_rows"] == 6 + 5 * 8
    assert summary["class_counts"]["neutral"] == 5 * 2
    assert summary["steps"] == 2 and summary["examples_seen"] == 8
    assert summary["backend"] in ("unsloth", "peft")
    manifest = json.loads((out / "screener_model.json").read_text())
    assert manifest["label_words"] == list(THREE_WAY_LABELS) and len(manifest["label_token_ids"]) == 3


def test_unsloth_gets_a_tokenizer_whose_pad_is_not_eos(tmp_path):
    from transformers import AutoTokenizer

    from training.llm import tokenizer_with_own_pad

    base = make_tiny_llama(tmp_path / "base")
    assert tokenizer_with_own_pad(str(base)) == str(base)  # its <pad> is its own
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.add_tokens(["<|fim_pad|>"])
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(tmp_path / "eos-pad")
    where = tokenizer_with_own_pad(str(tmp_path / "eos-pad"))
    assert where != str(tmp_path / "eos-pad")
    fixed = AutoTokenizer.from_pretrained(where)
    assert fixed.pad_token == "<|fim_pad|>" and fixed.eos_token == "</s>"
    assert len(fixed) == len(tokenizer)
    assert tokenizer_with_own_pad(str(tmp_path / "eos-pad")) == where  # written once
