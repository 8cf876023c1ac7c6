"""The GPU engine scores a Qwen2 model (q/k/v biases, its own rope theta, grouped-query attention) like the
reference classifier and a plain padded forward: checked on CPU in fp32 with three label words.

The model is a tiny random-weight Qwen2ForCausalLM (fixed seed; weights and biases drawn large enough that
probabilities spread well away from a third, so that a bias or rope mistake shows). The tokenizer is a byte-level
BPE trained here on a few lines with Qwen2's pre-tokenizer pattern and, as Qwen's, no BOS token.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from screener.classifiers.base import THREE_WAY_LABELS  # noqa: E402
from screener.classifiers.gpu.runner import LabelTokenEngine  # noqa: E402
from screener.classifiers.llm import LabelTokenClassifier  # noqa: E402
from screener.errors import ModelError  # noqa: E402
from screener.prompt import alpaca_prompt, label_token_ids  # noqa: E402

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
ROPE_THETA = 1_000_000.0

TEXTS = [
    "a great movie",
    "",
    "\nstarts with a newline",
    " starts with a space",
    "the worst film i have seen in years , dull and far too long !",
    "ok , nothing special either way",
    "numbers 12345 and punctuation ?!",
    "négatif : très mauvais",
    "this one is a little longer than the others and keeps going for a while so the batch has varied lengths",
]


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    corpus = [alpaca_prompt(t) for t in TEXTS] + ["\n\n".join(TEXTS)] * 20 + list(THREE_WAY_LABELS) * 20
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def tiny_qwen2(rope_theta: float = ROPE_THETA, bias_scale: float = 0.5):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = tiny_tokenizer()
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=96, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=1024,
                         rope_parameters={"rope_theta": rope_theta, "rope_type": "default"},
                         tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.25)
            elif name.endswith(".bias"):
                p.normal_(0.0, bias_scale)
    return model.float().eval()


def padded_forward(model, tokenizer, label_ids, texts):
    """Whole prompts, left padded with an attention mask, label-token probabilities at the last position."""
    tokenizer.padding_side = "left"
    with torch.no_grad():
        enc = tokenizer([alpaca_prompt(t) for t in texts], return_tensors="pt", padding=True)
        return torch.softmax(model(**enc).logits[:, -1, list(label_ids)].float(), -1).numpy()


def test_the_tiny_model_has_qwen2s_biases_and_rope_theta():
    model = tiny_qwen2()
    attn = model.model.layers[0].self_attn
    assert all(m.bias is not None and m.bias.abs().max() > 0.1 for m in (attn.q_proj, attn.k_proj, attn.v_proj))
    assert attn.o_proj.bias is None
    assert model.model.rotary_emb.inv_freq[-1] == pytest.approx(ROPE_THETA ** (-14 / 16))
    assert len(set(label_token_ids(tiny_tokenizer(), THREE_WAY_LABELS))) == 3


def test_engine_equals_reference_classifier_and_padded_forward_in_fp32():
    tokenizer = tiny_tokenizer()
    model = tiny_qwen2()
    label_ids = label_token_ids(tokenizer, THREE_WAY_LABELS)
    expected = padded_forward(model, tokenizer, label_ids, TEXTS)
    reference = LabelTokenClassifier(model, tokenizer, label_ids, name="ref", model_id="ref", device="cpu",
                                     labels=THREE_WAY_LABELS).predict_proba(TEXTS)
    engine = LabelTokenEngine(model, tokenizer, label_ids, name="tiny-qwen2", labels=THREE_WAY_LABELS)
    got = engine.predict_proba(TEXTS)
    assert got.shape == (len(TEXTS), 3) and engine.labels == THREE_WAY_LABELS
    assert expected.max() - expected.min() > 0.3  # not near-constant outputs
    np.testing.assert_allclose(reference, expected, atol=2e-5, rtol=0)
    np.testing.assert_allclose(got, reference, atol=2e-5, rtol=0)
    np.testing.assert_allclose(engine.predict_negative(TEXTS), expected[:, 0], atol=2e-5, rtol=0)


@pytest.mark.parametrize("change", [{"bias_scale": 0.0}, {"rope_theta": 10_000.0}])
def test_the_comparison_tells_missing_biases_and_another_rope_theta_apart(change):
    # An engine that dropped the q/k/v biases, or used the default rope theta, would be off by this much.
    tokenizer = tiny_tokenizer()
    label_ids = label_token_ids(tokenizer, THREE_WAY_LABELS)
    base = padded_forward(tiny_qwen2(), tokenizer, label_ids, TEXTS)
    other = tiny_qwen2(**change)
    assert np.abs(padded_forward(other, tokenizer, label_ids, TEXTS) - base).max() > 1e-2
    engine = LabelTokenEngine(other, tokenizer, label_ids, labels=THREE_WAY_LABELS)
    np.testing.assert_allclose(engine.predict_proba(TEXTS), padded_forward(other, tokenizer, label_ids, TEXTS),
                               atol=2e-5, rtol=0)


def test_engine_refuses_sliding_window_layers():
    model = tiny_qwen2()
    model.model.layers[1].self_attn.sliding_window = 16
    tokenizer = tiny_tokenizer()
    with pytest.raises(ModelError, match="sliding-window"):
        LabelTokenEngine(model, tokenizer, label_token_ids(tokenizer, THREE_WAY_LABELS), labels=THREE_WAY_LABELS)
