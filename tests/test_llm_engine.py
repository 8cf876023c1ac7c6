"""The GPU engine computes the reference's probabilities: checked on CPU against a plain padded transformers forward.

The model is a tiny random-weight LlamaForCausalLM (fixed seed, weights scaled up so that probabilities spread
well away from 0.5); the tokenizer is a byte-level BPE trained here on a few lines, with Llama 3's pre-tokenizer
pattern, so that a text starting with a newline merges with the prompt prefix's last token as with Llama 3.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from screener.classifiers.base import Classifier, ClassifierBase  # noqa: E402
from screener.classifiers.gpu import child, fp8  # noqa: E402
from screener.classifiers.gpu.loader import load_engine  # noqa: E402
from screener.classifiers.gpu.multi import MultiGPUEngine  # noqa: E402
from screener.classifiers.gpu.packing import end_to_end, pack_chunk, plan_batches, regroup  # noqa: E402
from screener.classifiers.gpu.prompt_tokens import PromptTokenizer, shared_prefix_lengths  # noqa: E402
from screener.classifiers.gpu.runner import LabelTokenEngine, default_max_padding  # noqa: E402
from screener.errors import ModelError  # noqa: E402
from screener.prompt import alpaca_prompt, label_token_ids, prompt_prefix_and_suffix  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

TEXTS = [
    "a great movie",
    "",
    "\nstarts with a newline",
    "\n\nstarts with two newlines",
    " starts with a space",
    "the worst film i have seen in years , dull and far too long !",
    "ok",
    "ends with newlines\n\n",
    "numbers 12345 and punctuation ?!",
    "négatif : très mauvais",
    "this one is a little longer than the others and keeps going for a while so the batch has varied lengths",
]


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    # Blank lines dominate the corpus, so the "\n\n" merge outranks ":\n" and a text starting with a newline
    # changes the prefix's last token.
    corpus = [alpaca_prompt(t) for t in TEXTS] + ["\n\n".join(TEXTS)] * 20 + ["negative positive"] * 5
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["<pad>", "<s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>")


def tiny_model(seed: int = 0, dtype=None, scale: float = 0.25, vocab_size: int | None = None):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size or len(tiny_tokenizer()), hidden_size=64, intermediate_size=96,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, scale)
    return model.to(dtype or torch.float32).eval()


def padded_forward(model, tokenizer, label_ids, texts, batch_size=4):
    """The plain way: whole prompts, left padded with an attention mask, label logits at the last position."""
    tokenizer.padding_side = "left"
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer([alpaca_prompt(t) for t in texts[i:i + batch_size]], return_tensors="pt", padding=True)
            logits = model(**enc).logits[:, -1, list(label_ids)].float()
            out.append(torch.softmax(logits, -1)[:, 0])
    return torch.cat(out).numpy()


def make_engine(seed=0, **kwargs):
    tokenizer = tiny_tokenizer()
    model = tiny_model(seed)
    label_ids = label_token_ids(tokenizer)
    return model, tokenizer, label_ids, LabelTokenEngine(model, tokenizer, label_ids, **kwargs)


def build_tiny_engine(device: str) -> LabelTokenEngine:
    torch.set_num_threads(1)
    return make_engine(0, name="tiny")[3]


def one_thread(build, device: str):
    """``build(device)`` in a forked worker with torch on one thread: a thread pool the parent used before the fork
    would deadlock there."""
    torch.set_num_threads(1)
    return build(device)


def test_tokenizer_makes_a_newline_text_straddle_the_cached_prefix():
    tokenizer = tiny_tokenizer()
    prefix_ids = tokenizer(prompt_prefix_and_suffix()[0])["input_ids"]
    full = tokenizer(alpaca_prompt("\nstarts with a newline"))["input_ids"]
    plain = tokenizer(alpaca_prompt("a great movie"))["input_ids"]
    assert prefix_reuse([plain], prefix_ids) == [len(prefix_ids)]
    assert prefix_reuse([full], prefix_ids)[0] < len(prefix_ids)


def test_engine_equals_padded_forward_in_fp32():
    tokenizer = tiny_tokenizer()
    model = tiny_model(0)
    label_ids = label_token_ids(tokenizer)
    expected = padded_forward(model, tokenizer, label_ids, TEXTS)
    engine = LabelTokenEngine(model, tokenizer, label_ids, name="tiny")
    got = engine.predict_negative(TEXTS)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS),)
    assert expected.max() - expected.min() > 0.2  # the comparison is not between near-constant outputs
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)
    # The model's own forward still works after its projections became views into the fused weights.
    np.testing.assert_allclose(padded_forward(model, tokenizer, label_ids, TEXTS), expected, atol=1e-6, rtol=0)


def test_folding_the_residual_into_the_products_changes_nothing_but_rounding():
    tokenizer = tiny_tokenizer()
    model = tiny_model(0)
    label_ids = label_token_ids(tokenizer)
    folded = LabelTokenEngine(model, tokenizer, label_ids, name="tiny")
    unfolded = LabelTokenEngine(model, tokenizer, label_ids, name="tiny", fold_residual=False)
    twice = folded.predict_negative(TEXTS)
    np.testing.assert_allclose(twice, unfolded.predict_negative(TEXTS), atol=1e-5)
    # The fold writes into tensors of the forward only: the cached prefix is the same on a second call.
    np.testing.assert_allclose(folded.predict_negative(TEXTS), twice, atol=1e-6)
    assert folded.model_id == unfolded.model_id


def test_batches_may_pad_less_on_models_as_wide_as_llama_8b():
    assert (default_max_padding(4096), default_max_padding(1536), default_max_padding(576)) == (0.03, 0.1, 0.1)
    tokenizer = tiny_tokenizer()
    model = tiny_model(0)
    assert LabelTokenEngine(model, tokenizer, label_token_ids(tokenizer)).max_padding == 0.1
    assert LabelTokenEngine(model, tokenizer, label_token_ids(tokenizer), max_padding=0.5).max_padding == 0.5


def test_engine_is_invariant_to_order_and_batch_size():
    _, _, _, engine = make_engine(0, token_budget=4096)
    base = engine.predict_negative(TEXTS)
    perm = np.random.default_rng(1).permutation(len(TEXTS))
    np.testing.assert_allclose(engine.predict_negative([TEXTS[i] for i in perm]), base[perm], atol=1e-6, rtol=0)
    engine.token_budget, engine.chunk_size = 40, 3  # about one row per batch, many chunks
    np.testing.assert_allclose(engine.predict_negative(TEXTS), base, atol=1e-6, rtol=0)
    np.testing.assert_allclose(engine.predict_negative(TEXTS[2:3]), base[2:3], atol=1e-6, rtol=0)


def test_engine_scores_no_texts_and_satisfies_the_classifier_protocol():
    _, tokenizer, _, engine = make_engine(0)
    assert isinstance(engine, Classifier)
    assert engine.predict_negative([]).shape == (0,)
    assert engine.token_lengths(["a great movie", ""]) == [
        len(tokenizer("a great movie", add_special_tokens=False)["input_ids"]), 0]


def test_model_id_follows_weights_and_prompt_not_dtype():
    tokenizer = tiny_tokenizer()
    label_ids = label_token_ids(tokenizer)
    ids = {
        "a": LabelTokenEngine(tiny_model(0), tokenizer, label_ids).model_id,
        "a-bf16": LabelTokenEngine(tiny_model(0, torch.bfloat16), tokenizer, label_ids).model_id,
        "b": LabelTokenEngine(tiny_model(1), tokenizer, label_ids).model_id,
        "a-other-prompt": LabelTokenEngine(tiny_model(0), tokenizer, label_ids, "Is this text negative?").model_id,
    }
    assert ids["a"] == ids["a-bf16"]
    assert len({ids["a"], ids["b"], ids["a-other-prompt"]}) == 3
    assert LabelTokenEngine(tiny_model(0), tokenizer, label_ids, model_id="given").model_id == "given"


def test_engine_refuses_unmerged_adapter_layers():
    class LoraLinear(torch.nn.Linear):
        pass

    tokenizer = tiny_tokenizer()
    model = tiny_model(0)
    old = model.model.layers[0].self_attn.q_proj
    model.model.layers[0].self_attn.q_proj = LoraLinear(old.in_features, old.out_features, bias=False)
    with pytest.raises(ModelError, match="merge LoRA"):
        LabelTokenEngine(model, tokenizer, label_token_ids(tokenizer))


def test_plan_batches_groups_by_shared_prefix_and_respects_the_budget():
    lengths = np.array([5, 3, 3, 8, 2])
    shared = np.array([4, 4, 3, 4, 4])
    plan = functools.partial(plan_batches, lengths, shared, max_padding=100.0)
    # shared 3: [2]; shared 4 sorted by length: 4 (2), 1 (3), 0 (5), 3 (8); 3 rows x 5 > 10 cuts before 0.
    assert [b.tolist() for b in plan(token_budget=10, max_batch=8)] == [[2], [4, 1], [0], [3]]
    assert [b.tolist() for b in plan(token_budget=100, max_batch=2)] == [[2], [4, 1], [0, 3]]


def test_plan_batches_bounds_padding():
    lengths, shared = np.array([10, 11, 20, 10]), np.zeros(4, dtype=int)
    # 10+10+11 padded to 3 x 11 = 33 <= 1.1 x 31; adding 20 would pad 51 real tokens to 80.
    assert [b.tolist() for b in plan_batches(lengths, shared, 100, 8, max_padding=0.1)] == [[0, 3, 1], [2]]
    assert [b.tolist() for b in plan_batches(lengths, shared, 100, 8, max_padding=1.0)] == [[0, 3, 1, 2]]


def test_regroup_plans_small_batches_of_several_chunks_together_and_holds_back_what_stays_small():
    small = [(np.array([[1, 2, 0], [3, 4, 5]]), np.array([1, 2]), np.array([0, 1]), 4),
             (np.array([[6, 7]]), np.array([1]), np.array([7]), 4),
             (np.array([[8]]), np.array([0]), np.array([9]), 3)]
    options = {"token_budget": 100, "max_batch": 8, "max_padding": 0.5, "keep_below": 6}
    # Shared 4, lengths 2, 2, 3: one batch of 3 x 3 = 9 tokens (<= 1.5 x 7 real), run; shared 3 alone: 1 token, held.
    run, held = regroup(small, **options)
    assert [(b[0].tolist(), b[1].tolist(), b[2].tolist(), b[3]) for b in run] == [
        ([[1, 2, 0], [6, 7, 0], [3, 4, 5]], [1, 1, 2], [0, 7, 1], 4)]
    assert [(b[0].tolist(), b[1].tolist(), b[2].tolist(), b[3]) for b in held] == [([[8]], [0], [9], 3)]
    run, held = regroup(small, final=True, **options)
    assert sorted(b[2].tolist() for b in run) == [[0, 7, 1], [9]] and held == []
    assert regroup([], **options) == ([], [])


def test_engine_batches_hold_small_batches_back_and_score_every_message_once():
    _, _, _, engine = make_engine(0, producer="thread")
    texts = [f"{t} {i}" for i in range(40) for t in TEXTS]
    engine.token_budget, engine.chunk_size = 256, 16  # many chunks, each with a few rows of each length
    batches = list(engine.batches(texts))
    assert sorted(int(r) for b in batches for r in b.rows) == list(range(len(texts)))
    options = {"max_text_tokens": engine.max_text_tokens, "token_budget": 256, "max_batch": engine.max_batch,
               "max_padding": engine.max_padding}
    chunked = [b for i in range(0, len(texts), 16)
               for b in pack_chunk(engine.prompts, engine.prefix_ids, texts[i:i + 16], **options)]
    whole = pack_chunk(engine.prompts, engine.prefix_ids, texts, **options)
    # Batches under half the budget: about as few as if the call were planned in one piece (rows already run in
    # a chunk's full batches are not there to join them), far fewer than chunk by chunk.
    small = sum(b.ids.numel() < 128 for b in batches)
    assert small <= 2 * sum(b[0].size < 128 for b in whole) and small < sum(b[0].size < 128 for b in chunked) / 4
    assert len(batches) < len(chunked) / 2
    expected = make_engine(0, producer="thread")[3].predict_negative(texts)
    np.testing.assert_allclose(engine.predict_negative(texts), expected, atol=1e-6, rtol=0)


def test_plan_batches_ragged_cuts_by_real_tokens_whatever_the_lengths():
    lengths, shared = np.array([5, 3, 9, 2, 12]), np.array([4, 4, 4, 4, 3])
    # shared 3: the 12-token row alone, longer than the budget; shared 4 by length 2, 3, 5 (10 tokens), then 9.
    plan = plan_batches(lengths, shared, 10, 8, max_padding=0.0, ragged=True)
    assert [b.tolist() for b in plan] == [[4], [3, 1, 0], [2]]
    assert [b.tolist() for b in plan_batches(lengths, shared, 100, 2, ragged=True)] == [[4], [3, 1], [0, 2]]


def test_end_to_end_lays_each_rows_tokens_after_the_last():
    flat = np.arange(10, 20)
    assert end_to_end(flat, np.array([1, 6, 0]), np.array([2, 3, 1])).tolist() == [11, 12, 16, 17, 18, 10]
    assert end_to_end(flat, np.array([], dtype=np.int64), np.array([], dtype=np.int64)).tolist() == []


def test_regroup_plans_small_ragged_batches_again_as_ragged_ones():
    small = [(np.array([1, 2, 3, 4, 5]), np.array([1, 2]), np.array([0, 1]), 4),
             (np.array([6, 7]), np.array([1]), np.array([7]), 4),
             (np.array([8]), np.array([0]), np.array([9]), 3)]
    # Shared 4: lengths 2, 3, 2 sorted to rows 0, 7, 1 (7 tokens), run; shared 3: one token, held.
    run, held = regroup(small, token_budget=100, max_batch=8, max_padding=0.0, keep_below=6)
    assert [(b[0].tolist(), b[1].tolist(), b[2].tolist(), b[3]) for b in run] == [
        ([1, 2, 6, 7, 3, 4, 5], [1, 1, 2], [0, 7, 1], 4)]
    assert [(b[0].tolist(), b[1].tolist(), b[2].tolist(), b[3]) for b in held] == [([8], [0], [9], 3)]


def test_ragged_batches_hold_every_rows_real_tokens_and_no_padding():
    _, _, _, engine = make_engine(0, producer="thread")
    texts = [f"{t} {'and more ' * (i % 7)}{i}" for i in range(30) for t in TEXTS]
    options = {"max_text_tokens": engine.max_text_tokens, "token_budget": 512, "max_batch": engine.max_batch,
               "max_padding": engine.max_padding}
    padded = pack_chunk(engine.prompts, engine.prefix_ids, texts, **options)
    ragged = pack_chunk(engine.prompts, engine.prefix_ids, texts, ragged=True, **options)
    rows = {}
    for ids, last, idx, shared in padded:
        rows.update({int(i): (row[: n + 1].tolist(), shared) for row, n, i in zip(ids, last, idx)})
    seen = {}
    for ids, last, idx, shared in ragged:
        assert ids.ndim == 1 and ids.size == int((last + 1).sum()) <= 512
        bounds = np.concatenate(([0], np.cumsum(last + 1)))
        seen.update({int(i): (ids[a:b].tolist(), shared) for a, b, i in zip(bounds, bounds[1:], idx)})
    assert seen == rows and len(seen) == len(texts)
    assert len(ragged) < len(padded)


def test_ragged_batches_score_like_padded_ones():
    texts = [f"{t} {'and more ' * (i % 7)}{i}" for i in range(12) for t in TEXTS]
    fused = {"fused_attention": True, "fused_rotary": True, "fused_mlp": True, "producer": "thread"}
    _, _, _, ragged = make_engine(0, **fused)
    _, _, _, padded = make_engine(0, ragged=False, **fused)
    assert ragged.ragged and not padded.ragged
    batches = list(ragged.batches(texts))
    assert all(b.starts is not None and b.ids.ndim == 1 for b in batches)
    assert sorted(int(r) for b in batches for r in b.rows) == list(range(len(texts)))
    b = batches[0]
    assert b.starts.tolist() == [0, *np.cumsum(b.last.numpy() + 1).tolist()]
    assert b.positions.tolist() == [p for n in (b.last + 1).tolist() for p in range(n)]
    expected = make_engine(0, producer="thread")[3].predict_proba(texts)
    assert expected[:, 0].max() - expected[:, 0].min() > 0.1
    np.testing.assert_allclose(ragged.predict_proba(texts), expected, atol=2e-6, rtol=0)
    np.testing.assert_allclose(padded.predict_proba(texts), expected, atol=2e-6, rtol=0)


def prefix_reuse(prompts: list[list[int]], prefix_ids: list[int]) -> list[int]:
    lengths = np.array([len(p) for p in prompts])
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    flat = np.array([t for p in prompts for t in p], dtype=np.int64)
    return shared_prefix_lengths(flat, starts, lengths, prefix_ids).tolist()


def test_shared_prefix_lengths_keep_one_token_to_compute():
    prompts = [[1, 2, 3, 9], [1, 2, 7, 9], [1, 2, 3], [5], [1], [1, 2, 3, 4, 5]]
    assert prefix_reuse(prompts, [1, 2, 3]) == [3, 2, 2, 0, 0, 3]
    assert prefix_reuse(prompts, []) == [0] * 6


def tricky_texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    pieces = ["\n", "\n\n", " ", "  ", ":", "#", "!", "'s", "12", "ok", "Bad", "é", "日", "\t", "Input", "###"]
    return ["".join(rng.choice(pieces, size=rng.integers(0, 8))) for _ in range(n)]


def test_prompt_tokenizer_anchored_ids_equal_whole_prompt_ids():
    tokenizer = tiny_tokenizer()
    prompts = PromptTokenizer(tokenizer)
    assert prompts.anchored
    texts = TEXTS + tricky_texts(300)
    assert prompts.encode(texts) == tokenizer([alpaca_prompt(t) for t in texts])["input_ids"]


def test_prompt_tokenizer_tokenizes_whole_prompts_when_the_string_start_is_marked():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    tok.train_from_iterator([alpaca_prompt(t) for t in TEXTS] * 3, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>"], show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    prompts = PromptTokenizer(tokenizer)
    assert not prompts.anchored
    assert prompts.encode(TEXTS) == tokenizer([alpaca_prompt(t) for t in TEXTS])["input_ids"]


def test_prompt_tokenizer_cuts_long_texts_to_their_first_tokens():
    tokenizer = tiny_tokenizer()
    prompts = PromptTokenizer(tokenizer)
    text = "the worst film i have seen in years , dull and far too long !"
    limit = 4  # shorter than every prompt: only texts of more than 4 tokens are cut
    got = prompts.encode(["ok", text], max_text_tokens=limit)
    assert got[0] == tokenizer(alpaca_prompt("ok"))["input_ids"]
    cut = tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][:limit])
    assert cut != text and got[1] == tokenizer(alpaca_prompt(cut))["input_ids"]


def test_multi_gpu_engine_splits_one_call_across_workers_without_overlap():
    _, _, _, single = make_engine(0, name="tiny")
    expected = single.predict_negative(TEXTS)
    # fork keeps the test fast (no second torch import); on GPUs the engine spawns, as CUDA requires.
    with MultiGPUEngine(build_tiny_engine, ["cpu", "cpu"], start_method="fork") as multi:
        assert multi.model_id == single.model_id and multi.name == "tiny"
        np.testing.assert_allclose(multi.predict_negative(TEXTS), expected, atol=1e-6, rtol=0)
        assert multi.token_lengths(TEXTS[:2]) == single.token_lengths(TEXTS[:2])


def test_load_engine_scores_a_model_folder_like_the_reference_classifier(tmp_path):
    from screener.classifiers import llm

    tiny_model(0).save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    manifest = {"kind": "llm-labeltoken", "base": str(tmp_path / "base")}
    reference = llm.load_reference(tmp_path, manifest, device="cpu")
    engine = load_engine(tmp_path, manifest, "cpu", name=reference.name, model_id=reference.model_id)
    assert isinstance(engine, LabelTokenEngine) and engine.model_id == reference.model_id
    np.testing.assert_allclose(engine.predict_negative(TEXTS), reference.predict_negative(TEXTS), atol=2e-5, rtol=0)


def test_engine_attention_kernels_can_be_chosen_and_unknown_ones_are_refused():
    _, _, _, engine = make_engine(0)
    _, _, _, math_only = make_engine(0, attention="math")
    np.testing.assert_allclose(math_only.predict_negative(TEXTS), engine.predict_negative(TEXTS), atol=2e-5, rtol=0)
    with pytest.raises(AttributeError):
        make_engine(0, attention="no_such_kernel")


def test_engine_with_a_producer_process_scores_like_the_producer_thread():
    _, _, _, threaded = make_engine(0, producer="thread")
    _, _, _, engine = make_engine(0, producer="process")
    try:
        engine.token_budget, engine.chunk_size = 60, 2  # many chunks: several requests in flight
        expected = threaded.predict_negative(TEXTS)
        np.testing.assert_allclose(engine.predict_negative(TEXTS), expected, atol=1e-6, rtol=0)
        # A call abandoned part way leaves replies in the pipe; the next call must not take them for its own.
        batches = engine.batches(TEXTS)
        next(batches)
        batches.close()
        np.testing.assert_allclose(engine.predict_negative(TEXTS[::-1]), expected[::-1], atol=1e-6, rtol=0)
    finally:
        engine.close()
    with pytest.raises(ModelError, match="producer must be"):
        make_engine(0, producer="fibre")


def test_producer_process_streams_chunks_larger_than_the_pipe_buffer():
    # Requests and replies of megabytes: the engine sends the next chunk while the process sends a reply.
    _, _, _, threaded = make_engine(0, producer="thread")
    _, _, _, engine = make_engine(0, producer="process")
    texts = [f"{t} {i}" for i in range(4000) for t in TEXTS]
    try:
        engine.chunk_size = threaded.chunk_size = 8192
        got, expected = list(engine.batches(texts)), list(threaded.batches(texts))
    finally:
        engine.close()
    assert len(got) == len(expected) > 4
    for a, b in zip(got, expected):
        assert a.shared == b.shared and torch.equal(a.ids, b.ids) and torch.equal(a.rows, b.rows)


def test_fp8_engine_stays_close_to_the_full_precision_engine():
    tokenizer = tiny_tokenizer()
    label_ids = label_token_ids(tokenizer)
    # Milder weights than the other tests': with std 0.25 the logits are so large that any rounding flips them.
    expected = LabelTokenEngine(tiny_model(0, scale=0.12), tokenizer, label_ids).predict_negative(TEXTS)
    engine = LabelTokenEngine(tiny_model(0, scale=0.12), tokenizer, label_ids, fp8=True)
    assert all(isinstance(w, fp8.FP8Weight) for layer in engine._layers
               for w in (layer.wqkv, layer.wo, layer.wgu, layer.wdown))
    got = engine.predict_negative(TEXTS)
    assert expected.max() - expected.min() > 0.2
    assert 0 < np.abs(got - expected).max() < 0.08


def test_fp8_linear_is_the_product_of_the_row_scaled_float8_operands():
    torch.manual_seed(0)
    x, w, b = torch.randn(5, 7, 32), torch.randn(48, 32) * 0.1, torch.randn(48)
    got = fp8.to_fp8(w).linear(x, b, slice(16, None))
    assert torch.equal(LabelTokenEngine._linear(x, fp8.to_fp8(w), b, slice(16, None)), got)

    def rounded(m):  # each row scaled so its largest magnitude is e4m3's largest value, rounded, scaled back
        scale = m.abs().amax(-1, keepdim=True) / 448
        return (m / scale).to(torch.float8_e4m3fn).float() * scale

    expected = rounded(x.reshape(-1, 32)) @ rounded(w)[16:].T + b[16:]
    assert got.shape == (5, 7, 32)
    torch.testing.assert_close(got.reshape(-1, 32), expected, atol=1e-5, rtol=1e-5)
    assert (got.reshape(-1, 32) - (x.reshape(-1, 32) @ w[16:].T + b[16:])).abs().max() > 1e-3  # it did round


def test_fp8_refuses_projection_sizes_that_are_not_multiples_of_16():
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=40, intermediate_size=96, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    with pytest.raises(ModelError, match="multiples of 16"):
        LabelTokenEngine(LlamaForCausalLM(config).eval(), tokenizer, label_token_ids(tokenizer), fp8=True)


def packer_processes() -> list:
    import multiprocessing

    return [p for p in multiprocessing.active_children() if p.name == "screener-packer"]


def test_engine_predict_proba_and_batching_hints():
    _, _, _, engine = make_engine(0, token_budget=4096)
    proba = engine.predict_proba(TEXTS)
    assert engine.labels == ("negative", "positive")
    assert proba.dtype == np.float32 and proba.shape == (len(TEXTS), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(engine.predict_negative(TEXTS), proba[:, 0])
    assert engine.predict_proba([]).shape == (0, 2)
    # On CPU: no minimum window; the budget is the one it packs its own batches with.
    assert (engine.sizes_own_batches, engine.min_window_rows, engine.token_budget) == (True, 0, 4096)


def test_engine_scores_three_label_words_like_a_padded_forward():
    tokenizer = tiny_tokenizer()
    model = tiny_model(0)
    words = ("positive", "negative", "ok")
    label_ids = label_token_ids(tokenizer, words)
    engine = LabelTokenEngine(model, tokenizer, label_ids, labels=words)
    tokenizer.padding_side = "left"
    with torch.no_grad():
        enc = tokenizer([alpaca_prompt(t) for t in TEXTS], return_tensors="pt", padding=True)
        expected = torch.softmax(model(**enc).logits[:, -1, list(label_ids)].float(), -1).numpy()
    assert engine.negative_index == 1
    np.testing.assert_allclose(engine.predict_proba(TEXTS), expected, atol=2e-5, rtol=0)
    with pytest.raises(ModelError, match="one each"):
        LabelTokenEngine(model, tokenizer, label_ids[:2], labels=words)


def test_close_stops_the_producer_process_and_the_engine_still_scores():
    _, _, _, threaded = make_engine(0, producer="thread")
    before = len(packer_processes())
    with make_engine(0, producer="process")[3] as engine:
        assert len(packer_processes()) == before + 1
        expected = engine.predict_negative(TEXTS)
    assert len(packer_processes()) == before
    engine.close()  # a second close is harmless
    np.testing.assert_allclose(engine.predict_negative(TEXTS), expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(threaded.predict_negative(TEXTS), expected, atol=1e-6, rtol=0)


def test_multi_gpu_engine_reports_the_workers_hints_and_close_stops_them():
    import multiprocessing

    _, _, _, single = make_engine(0, name="tiny")
    multi = MultiGPUEngine(build_tiny_engine, ["cpu", "cpu"], start_method="fork")
    workers = [p for p in multiprocessing.active_children() if p not in packer_processes()]
    try:
        assert multi.labels == single.labels and multi.token_budget == single.token_budget
        assert multi.sizes_own_batches and multi.min_window_rows == 0
        np.testing.assert_allclose(multi.predict_proba(TEXTS), single.predict_proba(TEXTS), atol=1e-6, rtol=0)
    finally:
        multi.close()
    assert workers and not any(p.is_alive() for p in workers)
    multi.close()


def test_registry_loads_the_reference_classifier_off_cuda(tmp_path):
    from screener.classifiers.llm import LabelTokenClassifier
    from screener.classifiers.registry import load_classifier

    tiny_model(0).save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    (tmp_path / "screener_model.json").write_text(
        '{"kind": "llm-labeltoken", "base": "%s", "name": "tiny"}' % (tmp_path / "base"))
    clf = load_classifier(str(tmp_path), device="cpu")
    assert isinstance(clf, LabelTokenClassifier) and clf.name == "tiny"



def test_engine_reference_and_workers_give_the_same_three_way_probabilities(tmp_path):
    from transformers import AutoTokenizer

    from screener.classifiers import llm
    from screener.classifiers.gpu.loader import build_engine

    # "neutral" shares its first BPE token with "negative" here; as a token of its own it is a third class.
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "base")
    tokenizer.add_tokens(["neutral"])
    tokenizer.save_pretrained(tmp_path / "base")
    tiny_model(5, vocab_size=len(tokenizer)).save_pretrained(tmp_path / "base")
    words = ["negative", "neutral", "positive"]
    manifest = {"kind": "llm-labeltoken", "base": str(tmp_path / "base"), "label_words": words}
    reference = llm.load_reference(tmp_path, manifest, device="cpu")
    expected = reference.predict_proba(TEXTS)
    assert reference.labels == tuple(words) and expected.shape == (len(TEXTS), 3)
    assert (expected.max(axis=0) > 0.3).all()  # every class wins somewhere: the columns are not interchangeable
    engine = load_engine(tmp_path, manifest, "cpu", name="tiny3", model_id=reference.model_id)
    assert isinstance(engine, LabelTokenEngine) and engine.labels == tuple(words) and engine.negative_index == 0
    np.testing.assert_allclose(engine.predict_proba(TEXTS), expected, atol=2e-5, rtol=0)
    build = functools.partial(one_thread, functools.partial(build_engine, tmp_path, manifest, name="tiny3",
                                                            model_id=reference.model_id))
    with MultiGPUEngine(build, ["cpu", "cpu"], start_method="fork") as multi:
        assert multi.labels == tuple(words)
        np.testing.assert_allclose(multi.predict_proba(TEXTS), expected, atol=2e-5, rtol=0)


# ---- child processes that cannot start or die --------------------------------------------------------------


class SleepingClassifier(ClassifierBase):
    """A worker's classifier whose every call takes a minute: a worker killed meanwhile dies mid-call."""

    model_id = name = "sleeping"

    def predict_proba(self, texts):
        time.sleep(60)
        return np.zeros((len(texts), 2), dtype=np.float32)

    def token_lengths(self, texts):
        return [len(t) for t in texts]


def build_sleeping(device: str) -> SleepingClassifier:
    return SleepingClassifier()


def build_and_die(device: str):
    os.kill(os.getpid(), signal.SIGKILL)


def gpu_workers() -> list:
    import multiprocessing

    return [p for p in multiprocessing.active_children() if p.name.startswith("screener-gpu-worker")]


def test_a_producer_process_killed_mid_call_is_a_model_error_within_seconds():
    before = set(packer_processes())
    _, _, _, engine = make_engine(0, producer="process")
    try:
        (packer,) = set(packer_processes()) - before
        engine.token_budget, engine.chunk_size = 60, 2  # many chunks: the call is still going when it is killed
        batches = engine.batches(TEXTS * 10)
        next(batches)
        os.kill(packer.pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(ModelError, match=r"tokenizer process was killed by SIGKILL \(the out-of-memory"):
            list(batches)
        assert time.monotonic() - start < 5
        with pytest.raises(ModelError, match="killed by SIGKILL"):  # and so is every later call
            engine.predict_proba(TEXTS)
    finally:
        engine.close()


PACK_OPTIONS = {"max_text_tokens": 64, "token_budget": 256, "max_batch": 16, "max_padding": 0.1}

SCRIPT = """
import sys
from transformers import AutoTokenizer
from screener.classifiers.gpu.producer import ProducerProcess
from screener.classifiers.gpu.prompt_tokens import PromptTokenizer

prompts = PromptTokenizer(AutoTokenizer.from_pretrained(sys.argv[1]))
packer = ProducerProcess(prompts, prompts.prefix_ids)
print(len(list(packer.map([["a great movie"]], {options!r}))))
"""


def run_script(tmp_path, source: str) -> subprocess.CompletedProcess:
    tiny_tokenizer().save_pretrained(tmp_path / "tokenizer")
    script = tmp_path / "score.py"
    script.write_text(source)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(script), str(tmp_path / "tokenizer")], capture_output=True,
                          text=True, timeout=120, env=env, cwd=tmp_path)


def test_a_script_without_the_main_guard_fails_fast_naming_the_fix(tmp_path):
    done = run_script(tmp_path, SCRIPT.format(options=PACK_OPTIONS))
    assert done.returncode == 1
    assert "ModelError: cannot start the engine's tokenizer process" in done.stderr
    assert 'has no `if __name__ == "__main__":` guard' in done.stderr
    assert "bootstrapping" not in done.stderr  # refused before a process ran the script again


def test_a_child_that_dies_while_starting_is_reported_with_the_fix(tmp_path):
    # A guard that does not cover the engine passes the check; the spawned process dies importing the script.
    source = 'if __name__ == "__main__":\n    print("guarded")\n' + SCRIPT.format(options=PACK_OPTIONS)
    done = run_script(tmp_path, source)
    assert done.returncode == 1
    assert "ModelError: the engine's tokenizer process exited with code 1 before it started" in done.stderr
    assert 'guard the script\'s entry point with `if __name__ == "__main__":`' in done.stderr
    assert "bootstrapping" in done.stderr  # the process's own error, shown above the engine's


def test_the_same_script_with_the_main_guard_runs(tmp_path):
    body = SCRIPT.format(options=PACK_OPTIONS).strip().splitlines()
    imports = [line for line in body if line.startswith(("import", "from"))]
    rest = [line for line in body if line and line not in imports]
    source = "\n".join(imports + ['if __name__ == "__main__":'] + [f"    {line}" for line in rest]) + "\n"
    done = run_script(tmp_path, source)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


@pytest.mark.parametrize("source, guarded", [
    ('if __name__ == "__main__":\n    main()\n', True),
    ("import sys\nif '__main__' == __name__:\n    sys.exit(main())\n", True),
    ("def main():\n    pass\nmain()\n", False),
    ("def main():\n    if __name__ == '__main__':\n        pass\n", False),  # not at the top level
    ("this is not python (", True),  # not judged
])
def test_has_main_guard_looks_for_a_top_level_if_on_name(source, guarded):
    assert child.has_main_guard(source) is guarded


def test_a_gpu_worker_killed_mid_call_is_a_model_error_naming_it_and_the_engine_closes():
    multi = MultiGPUEngine(build_sleeping, ["cpu", "cpu"], start_method="fork")
    try:
        workers = gpu_workers()
        assert len(workers) == 2
        threading.Timer(1.0, os.kill, (workers[0].pid, signal.SIGKILL)).start()
        start = time.monotonic()
        with pytest.raises(ModelError, match="the GPU worker for cpu was killed by SIGKILL"):
            multi.predict_proba(["a", "b", "c"])
        assert time.monotonic() - start < 10  # not the other worker's minute
        assert not any(p.is_alive() for p in workers)
        with pytest.raises(ModelError, match="closed"):
            multi.predict_proba(["a"])
    finally:
        multi.close()


def test_a_gpu_worker_that_dies_while_loading_is_a_model_error_at_once():
    start = time.monotonic()
    with pytest.raises(ModelError, match="the GPU worker for cpu was killed by SIGKILL"):
        MultiGPUEngine(build_and_die, ["cpu", "cpu"], start_method="fork")
    assert time.monotonic() - start < 10
    assert not gpu_workers()
