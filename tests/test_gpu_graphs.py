"""CUDA graphs in the GPU engine: the bucket shapes, the planner's cuts for them, and that padding a batch to its
bucket (stale rows below, stale columns to the right) leaves every real row's probabilities as they were, which is
what replaying a graph over static buffers relies on. Checked on CPU, where the option itself runs eagerly; the
capture and replay are checked where there is a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_llm_engine import TEXTS, make_engine, tiny_model, tiny_tokenizer  # noqa: E402

from screener.classifiers.gpu.buckets import Buckets, small_rows, width_ladder  # noqa: E402
from screener.classifiers.gpu.packing import plan_batches  # noqa: E402
from screener.classifiers.gpu.runner import Batch, LabelTokenEngine  # noqa: E402
from screener.prompt import label_token_ids  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_width_ladder_is_every_width_to_32_then_sixteenths():
    assert width_ladder(1) == (1,)
    assert width_ladder(40) == tuple(range(1, 33)) + (34, 36, 38, 40)
    assert width_ladder(65)[-4:] == (60, 62, 64, 68)
    assert width_ladder(129)[-3:] == (124, 128, 136)


def test_small_rows_are_powers_of_two_and_one_and_a_half_times_them():
    assert [small_rows(r) for r in (1, 2, 3, 4, 5, 6, 7, 9, 13, 17, 25, 33)] == [1, 2, 3, 4, 6, 6, 8, 12, 16, 24, 32, 48]


def test_bucket_shapes_round_rows_to_steps_of_what_the_budget_allows():
    buckets = Buckets(token_budget=1000, max_batch=64, widths=width_ladder(100), row_steps=8)
    # Width 10: 1000 // 10 = 100 rows, capped at 64; steps of 64 / 8 = 8 rows, and below one step 1, 2, 3, 4, 6.
    assert (buckets.max_rows(10), buckets.row_step(10)) == (64, 8)
    assert [buckets.shape(r, 10) for r in (1, 5, 7, 8, 9, 64)] == [(1, 10), (6, 10), (8, 10), (8, 10), (16, 10),
                                                                   (64, 10)]
    # 33 tokens round up to width 34: 1000 // 34 = 29 rows, steps of ceil(29 / 8) = 4, the last step cut to 29.
    assert [buckets.shape(r, 33) for r in (3, 5, 29)] == [(3, 34), (8, 34), (29, 34)]
    assert buckets.shape(30, 33) is None  # more rows than the budget allows at that width
    assert buckets.shape(1, 101) is None  # wider than the ladder
    assert buckets.width(100) == 100 and buckets.width(101) is None


def test_plan_batches_with_buckets_cuts_to_whole_row_steps():
    shared = np.zeros(10, dtype=int)
    lengths = np.full(10, 3)
    # Width 3: 40 // 3 = 13 rows fit, in steps of ceil(13 / 4) = 4; 10 rows fit the budget, cut back to 8.
    buckets = Buckets(token_budget=40, max_batch=64, widths=width_ladder(8), row_steps=4)
    assert [len(b) for b in plan_batches(lengths, shared, 40, 64)] == [10]
    assert [len(b) for b in plan_batches(lengths, shared, 40, 64, buckets=buckets)] == [8, 2]


def test_plan_batches_with_buckets_budgets_the_rounded_width():
    shared, lengths = np.zeros(3, dtype=int), np.full(3, 33)
    # 3 x 33 = 99 fits a budget of 100, but 33 tokens pad to width 34 and 3 x 34 = 102 does not.
    buckets = Buckets(token_budget=100, max_batch=64, widths=width_ladder(40))
    assert [len(b) for b in plan_batches(lengths, shared, 100, 64)] == [3]
    assert [len(b) for b in plan_batches(lengths, shared, 100, 64, buckets=buckets)] == [2, 1]


def test_packed_ids_are_padded_to_the_bucket_width():
    from screener.classifiers.gpu.packing import pack_chunk
    from screener.classifiers.gpu.prompt_tokens import PromptTokenizer

    prompts = PromptTokenizer(tiny_tokenizer())
    options = {"max_text_tokens": 512, "token_budget": 4096, "max_batch": 64, "max_padding": 0.1}
    buckets = Buckets(4096, 64, width_ladder(600))
    plain = pack_chunk(prompts, prompts.prefix_ids, TEXTS, **options)
    padded = pack_chunk(prompts, prompts.prefix_ids, TEXTS, **options, buckets=buckets)
    for ids, last, _, _ in padded:
        assert ids.shape[1] == buckets.width(int(last.max()) + 1)
        assert (ids[np.arange(ids.shape[1]) > last[:, None]] == 0).all()
    # The same rows and tokens, whatever the cuts: each text's ids are its ids.
    def by_text(batches):
        return {int(i): ids[r, : last[r] + 1].tolist() for ids, last, idx, _ in batches for r, i in enumerate(idx)}

    assert by_text(padded) == by_text(plain)


def test_a_batch_padded_to_its_bucket_scores_its_rows_as_before():
    _, _, _, engine = make_engine(0, token_budget=4096)
    generator = torch.Generator().manual_seed(0)
    vocab = len(tiny_tokenizer())
    with torch.inference_mode():
        for batch in engine.batches(TEXTS):
            rows, width = batch.ids.shape
            shape = (rows + 5, width + 7)
            ids = torch.randint(0, vocab, shape, generator=generator)  # stale tokens everywhere but the batch
            ids[:rows, :width] = batch.ids
            last = torch.randint(0, shape[1], (shape[0],), generator=generator)
            last[:rows] = batch.last
            padded = engine.run_batch(Batch(ids, last, torch.arange(shape[0]), batch.shared))[:rows]
            torch.testing.assert_close(padded, engine.run_batch(batch), atol=1e-6, rtol=1e-5)


def test_cuda_graphs_on_cpu_run_eagerly_with_the_same_results():
    _, _, _, engine = make_engine(0)
    _, _, _, graphed = make_engine(0, cuda_graphs=True)
    assert (graphed.cuda_graphs, graphed.buckets, graphed.graph_stats()) == (False, None, None)
    np.testing.assert_array_equal(graphed.predict_proba(TEXTS), engine.predict_proba(TEXTS))


@cuda
def test_cuda_graphs_replay_the_eager_probabilities():
    tokenizer = tiny_tokenizer()
    label_ids = label_token_ids(tokenizer)
    texts = TEXTS * 40
    # Milder weights than 0.25: bf16 rounding in batches of other shapes must not flip the probabilities.
    eager = LabelTokenEngine(tiny_model(0, dtype=torch.bfloat16, scale=0.12).cuda(), tokenizer, label_ids,
                             producer="thread", token_budget=2048)
    graphed = LabelTokenEngine(tiny_model(0, dtype=torch.bfloat16, scale=0.12).cuda(), tokenizer, label_ids,
                               producer="thread", token_budget=2048, cuda_graphs=True)
    expected = eager.predict_proba(texts)
    first = graphed.predict_proba(texts)  # every bucket warmed up eagerly, then captured
    stats = graphed.graph_stats()
    assert stats["disabled"] is None and stats["graphs"] > 0 and stats["eager_batches"] == stats["graphs"]
    second = graphed.predict_proba(texts)  # replays only
    assert graphed.graph_stats()["replays"] >= stats["graphs"] and graphed.graph_stats()["graphs"] == stats["graphs"]
    np.testing.assert_allclose(first, expected, atol=2e-2)
    np.testing.assert_allclose(second, first, atol=2e-2)
    graphed.close()


@cuda
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs a GPU with float8 matrix units")
def test_float8_on_cuda_graphs_stays_close_to_bf16():
    tokenizer = tiny_tokenizer()
    label_ids = label_token_ids(tokenizer)
    texts = TEXTS * 40
    expected = LabelTokenEngine(tiny_model(0, dtype=torch.bfloat16, scale=0.12).cuda(), tokenizer, label_ids,
                                producer="thread", token_budget=2048).predict_negative(texts)
    engine = LabelTokenEngine(tiny_model(0, dtype=torch.bfloat16, scale=0.12).cuda(), tokenizer, label_ids,
                              producer="thread", token_budget=2048, fp8=True, cuda_graphs=True)
    engine.predict_negative(texts)
    got = engine.predict_negative(texts)  # replayed
    assert engine.graph_stats()["disabled"] is None and engine.graph_stats()["replays"] > 0
    assert expected.max() - expected.min() > 0.2
    assert 0 < np.abs(got - expected).max() < 0.08
    engine.close()
