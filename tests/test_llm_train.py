"""LoRA fine-tuning (training/llm.py): the real Unsloth path on the CPU, the PEFT path, and the data plumbing."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from test_llm_classifier import make_tiny_llama  # noqa: E402

from screener.classifiers.registry import load_classifier  # noqa: E402
from training.llm import batch_order, encode_examples, lr_lambda, train_llm  # noqa: E402
from training.recipes import load_recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def write_sst2(folder: Path, rows: list[tuple[str, int]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    return folder


TOY = [("good movie", 1), ("bad movie", 0), ("great plot", 1), ("awful plot", 0),
       ("good great", 1), ("bad awful", 0), ("a good movie", 1), ("a bad movie", 0)]


def test_unsloth_path_trains_both_recipes_and_the_output_loads(tmp_path):
    """Runs in a fresh interpreter: Unsloth must be imported before transformers to patch it."""
    base = make_tiny_llama(tmp_path / "base")
    data = write_sst2(tmp_path / "data", TOY)
    script = (
        "import json, sys\n"
        "from training.train import run_train\n"
        "out = {}\n"
        "for recipe in ('full', 'paper'):\n"
        f"    s = run_train({str(base)!r}, recipe, {str(data)!r}, {str(tmp_path)!r} + '/' + recipe, max_steps=2,"
        " device='cpu')\n"
        "    out[recipe] = {k: s[k] for k in ('backend', 'steps', 'output', 'examples_seen')}\n"
        "print('RESULT ' + json.dumps(out))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    if importlib.util.find_spec("unsloth") is None:
        # Where Unsloth cannot be installed the fallback must run and say why.
        expected_backend = "peft"
        assert "Unsloth unavailable:" in proc.stdout + proc.stderr
    else:
        expected_backend = "unsloth"
    for recipe in ("full", "paper"):
        summary = result[recipe]
        assert summary["backend"] == expected_backend
        assert summary["steps"] == 2
        # full: 2 steps of one batch holding all 8 toy rows; paper: 2 steps of 2 rows x 4 accumulation
        assert summary["examples_seen"] == 16
        p = load_classifier(summary["output"], device="cpu").predict_negative(["good movie", "bad plot"])
        assert p.shape == (2,) and np.all((p > 0) & (p < 1))


def test_label_token_objective_learns_a_separable_toy_task_with_peft(tmp_path):
    base = make_tiny_llama(tmp_path / "base")
    recipe = load_recipe("full")
    recipe.update(backend="peft", batch_size=8, learning_rate=1e-2, warmup_steps=0, lora_r=4, lora_alpha=8)
    texts, labels = zip(*TOY)
    before = load_classifier_for_base(tmp_path, base).predict_negative(list(texts))
    summary = train_llm(str(base), recipe, list(texts), list(labels), tmp_path / "out", max_steps=40, device="cpu")
    assert summary["backend"] == "peft"
    after = load_classifier(str(tmp_path / "out"), device="cpu").predict_negative(list(texts))
    truth_negative = np.array(labels) == 0
    assert np.all((after > 0.5) == truth_negative)
    assert not np.all((before > 0.5) == truth_negative)


def load_classifier_for_base(tmp_path, base):
    folder = tmp_path / "zeroshot"
    folder.mkdir()
    (folder / "screener_model.json").write_text(json.dumps({"kind": "llm-labeltoken", "base": str(base)}))
    return load_classifier(str(folder), device="cpu")


def test_a_recipe_is_validated_before_anything_loads(tmp_path):
    from screener.errors import ConfigError

    texts, labels = zip(*TOY)
    missing = tmp_path / "no-such-base"
    with pytest.raises(ConfigError, match="recipe 'full'.*'lora_dropout' must be in \\[0, 1\\), found 1.5"):
        train_llm(str(missing), {**load_recipe("full"), "lora_dropout": 1.5}, list(texts), list(labels),
                  tmp_path / "out", device="cpu")
    with pytest.raises(ConfigError, match="recipe 'minilm' has kind 'encoder'; expected 'llm-lora'"):
        train_llm(str(missing), load_recipe("minilm"), list(texts), list(labels), tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()


def test_causal_lm_rows_put_the_loss_on_the_label_word_and_end_token_only(tmp_path):
    from transformers import AutoTokenizer

    base = make_tiny_llama(tmp_path / "base")
    tokenizer = AutoTokenizer.from_pretrained(base)
    recipe = load_recipe("paper")
    neg, pos = tokenizer.convert_tokens_to_ids(["negative", "positive"])
    rows, targets, starts = encode_examples(tokenizer, ["good movie", "bad movie"], [1, 0], recipe,
                                            "Classify the sentiment of the following text.", (neg, pos))
    assert targets is None
    assert rows[0][starts[0]:] == [pos, tokenizer.eos_token_id]
    assert rows[1][starts[1]:] == [neg, tokenizer.eos_token_id]
    label_rows, label_targets, none = encode_examples(tokenizer, ["good movie", "bad movie"], [1, 0],
                                                      load_recipe("full"), "Classify the sentiment of the "
                                                      "following text.", (neg, pos))
    assert none is None and label_targets == [1, 0]  # class index: 0 = negative, 1 = positive
    assert label_rows[0] == rows[0][:starts[0]]


def test_length_grouped_batches_cover_every_row_once_with_less_padding():
    rng = random.Random(0)
    lengths = [rng.randint(10, 120) for _ in range(1000)]
    grouped = batch_order(lengths, 16, True, random.Random(1))
    plain = batch_order(lengths, 16, False, random.Random(1))
    for batches in (grouped, plain):
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(1000))
        assert all(1 <= len(b) <= 16 for b in batches)

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    assert padding(grouped) < padding(plain) / 5


def test_linear_schedule_warms_up_then_decays_to_zero():
    f = lr_lambda("linear", warmup=5, total=60)
    assert f(0) == pytest.approx(0.2)
    assert f(4) == pytest.approx(1.0)
    assert f(5) == pytest.approx(1.0)
    assert f(59) == pytest.approx(1 / 55)
    assert lr_lambda("constant", 0, 10)(9) == 1.0
    assert lr_lambda("cosine", 0, 10)(5) == pytest.approx(0.5)


def test_fixed_shape_batches_give_the_loss_of_the_unpadded_batch(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from screener.classifiers.llm import label_logits, pad_batch
    from training.llm import fixed_shape_batch, weighted_cross_entropy

    base = make_tiny_llama(tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    rows = [[1, 5, 6, 7], [1, 8, 9], [1, 10, 11, 12, 13]]
    targets = [0, 1, 1]
    ids, lens, y, w = fixed_shape_batch(rows, targets, n_rows=8, pad_id=3, multiple=16)
    assert ids.shape == (8, 16) and w.tolist() == [1, 1, 1, 0, 0, 0, 0, 0] and lens.tolist()[:3] == [4, 3, 5]
    with torch.no_grad():
        padded = weighted_cross_entropy(label_logits(model, ids, lens, (29, 30)), y, w)
        plain_ids, plain_lens = pad_batch(rows, 3)
        plain = torch.nn.functional.cross_entropy(label_logits(model, plain_ids, plain_lens, (29, 30)),
                                                  torch.tensor(targets))
    assert padded.item() == pytest.approx(plain.item(), abs=1e-6)


def test_cuda_graphs_on_a_cpu_say_so_and_train_eagerly(tmp_path, caplog):
    base = make_tiny_llama(tmp_path / "base")
    recipe = load_recipe("full")
    recipe.update(backend="peft", batch_size=4, cuda_graphs=True)
    texts, labels = zip(*TOY)
    with caplog.at_level("WARNING", logger="training.llm"):
        summary = train_llm(str(base), recipe, list(texts), list(labels), tmp_path / "out", max_steps=2,
                            device="cpu")
    assert "cuda_graphs needs a CUDA device" in caplog.text
    assert summary["cuda_graphs"] is None and summary["steps"] == 2
