"""The graph the ONNX backend exports (a BERT's last layer for the first token only, fused by ONNX Runtime's
transformer optimizer, checked against torch before it is cached) and the classifier's batches cut across threads,
on tiny random BERTs built here."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from screener.batching import predict_proba
from screener.classifiers import hf, onnx, onnx_graph
from screener.classifiers.registry import load_classifier
from screener.errors import ModelError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from test_onnx_backend import TEXTS, build_model  # noqa: E402

VARIED = [*TEXTS, "good", "the film was not very good but the acting was great", "bad " * 7, "ok !", "i",
          "very very boring film , awful acting , not good", "fine"]


@pytest.fixture(autouse=True)
def screener_cache(tmp_path_factory, monkeypatch) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("SCREENER_CACHE", str(cache))
    return cache


def entry(model: Path) -> dict:
    manifest = json.loads((model / "screener_model.json").read_text())
    folder = onnx.entry_dir(onnx.entry_record(hf.manifest_model_id(model, manifest), "fp32"))
    return json.loads((folder / "entry.json").read_text())


def graph_ops(model: Path) -> set[str]:
    import onnx as onnx_lib

    manifest = json.loads((model / "screener_model.json").read_text())
    folder = onnx.entry_dir(onnx.entry_record(hf.manifest_model_id(model, manifest), "fp32"))
    return {node.op_type for node in onnx_lib.load(str(folder / "model.onnx")).graph.node}


def test_the_first_token_module_computes_the_model_in_torch():
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(1)
    config = BertConfig(vocab_size=40, hidden_size=24, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=32, num_labels=3)
    model = BertForSequenceClassification(config).eval()
    assert onnx_graph.first_token_supported(model)
    ids = torch.randint(0, 40, (5, 11))
    mask = torch.ones_like(ids)
    for row, length in enumerate((11, 1, 4, 7, 2)):
        mask[row, length:] = 0
    with torch.no_grad():
        want = torch.softmax(model(input_ids=ids, attention_mask=mask).logits, dim=-1)
        got = onnx_graph.first_token_module(model)(ids, mask)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_the_fused_first_token_graph_gives_torchs_probabilities(tmp_path):
    model = build_model(tmp_path / "m", seed=7)
    torch_clf = load_classifier(str(model), device="cpu", backend="torch")
    onnx_clf = load_classifier(str(model), device="cpu", backend="onnx")
    graph = entry(model)["graph"]
    assert graph["form"] == onnx_graph.FIRST_TOKEN
    assert {"SkipLayerNormalization", "BiasGelu"} <= set(graph["fused"]) and {"SkipLayerNormalization",
                                                                               "BiasGelu"} <= graph_ops(model)
    assert onnx_clf.model_id == torch_clf.model_id
    np.testing.assert_allclose(onnx_clf.predict_proba(VARIED), torch_clf.predict_proba(VARIED), atol=1e-5)


def test_an_architecture_the_first_token_graph_does_not_cover_exports_the_models_own_forward(tmp_path):
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    model = build_model(tmp_path / "m", seed=8)
    torch.manual_seed(8)
    config = RobertaConfig(vocab_size=25, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=66, num_labels=3, pad_token_id=0)
    roberta = RobertaForSequenceClassification(config)
    assert not onnx_graph.first_token_supported(roberta)
    roberta.save_pretrained(model)
    torch_clf = load_classifier(str(model), device="cpu", backend="torch")
    onnx_clf = load_classifier(str(model), device="cpu", backend="onnx")
    assert entry(model)["graph"]["form"] == onnx_graph.TRANSFORMERS
    np.testing.assert_allclose(onnx_clf.predict_proba(VARIED), torch_clf.predict_proba(VARIED), atol=1e-5)


def test_a_graph_that_misses_torch_is_replaced_by_the_models_own_forward(tmp_path, monkeypatch, caplog):
    import torch

    class Wrong(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.inner = onnx_graph.probabilities_module(model)

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids, attention_mask).flip(-1)

    monkeypatch.setattr(onnx_graph, "first_token_module", Wrong)
    model = build_model(tmp_path / "m", seed=9)
    with caplog.at_level(logging.WARNING, logger="screener.classifiers.onnx"):
        onnx_clf = load_classifier(str(model), device="cpu", backend="onnx")
    assert "cannot be used" in caplog.text and "differ by" in caplog.text
    assert entry(model)["graph"]["form"] == onnx_graph.TRANSFORMERS
    torch_clf = load_classifier(str(model), device="cpu", backend="torch")
    np.testing.assert_allclose(onnx_clf.predict_proba(VARIED), torch_clf.predict_proba(VARIED), atol=1e-5)


def test_a_new_export_scheme_builds_a_new_entry(tmp_path, monkeypatch):
    made = []
    real = onnx.export_fp32
    monkeypatch.setattr(onnx, "export_fp32", lambda *args: made.append(1) or real(*args))
    model = build_model(tmp_path / "m", seed=10)
    load_classifier(str(model), device="cpu", backend="onnx")
    load_classifier(str(model), device="cpu", backend="onnx")
    monkeypatch.setattr(onnx, "EXPORT_SCHEME", "onnx-export-test")
    load_classifier(str(model), device="cpu", backend="onnx")
    assert made == [1, 1]


def test_split_batch_cuts_runs_of_consecutive_texts_with_equal_shares_of_tokens():
    idx = np.array([4, 1, 3, 5, 0, 2])
    lengths = [10, 1, 10, 1, 1, 1]  # by text; idx holds them shortest first: 1, 1, 1, 1, 10, 10 tokens
    # 24 tokens: the first five texts hold 14 of them, the first four 4.
    assert [part.tolist() for part in onnx.split_batch(idx, lengths, 2)] == [[4, 1, 3, 5, 0], [2]]
    assert [part.tolist() for part in onnx.split_batch(idx, lengths, 1)] == [idx.tolist()]
    even = onnx.split_batch(np.arange(4), [5, 5, 5, 5], 2)
    assert [part.tolist() for part in even] == [[0, 1], [2, 3]]
    assert [part.tolist() for part in onnx.split_batch(np.arange(3), [2, 2, 2], 8)] == [[0], [1], [2]]


def test_scores_come_back_in_input_order_whatever_the_sorting_and_the_threads(tmp_path):
    model = build_model(tmp_path / "m", seed=11)
    clf = load_classifier(str(model), device="cpu", backend="onnx", threads=1)
    alone = np.concatenate([clf.predict_proba([text]) for text in VARIED])
    rng = np.random.default_rng(3)
    order = rng.permutation(len(VARIED))
    texts = [VARIED[i] for i in order]
    clf.threads, clf.batch_size, clf.token_budget = 3, 4, 4 * clf.max_length
    np.testing.assert_allclose(clf.predict_proba(texts), alone[order], atol=1e-6)
    np.testing.assert_allclose(predict_proba(clf, texts, 5), alone[order], atol=1e-6)
    clf.close()
    clf.close()
    with pytest.raises(ModelError, match="was closed: load it again"):
        clf.predict_proba(texts)


def test_a_scan_hands_the_classifier_whole_windows_it_tokenized_on_the_reading_thread(tmp_path):
    import threading

    import duckdb

    from screener.scan import scan
    from screener.settings import Settings
    from test_onnx_backend import make_archive

    model = build_model(tmp_path / "m", seed=12)
    clf = load_classifier(str(model), device="cpu", backend="onnx")
    on_main, calls = [], []
    encode, predict = clf.encode, clf.predict_proba
    clf.encode = lambda texts: on_main.append(threading.current_thread() is threading.main_thread()) or encode(texts)
    clf.predict_proba = lambda texts: calls.append(len(texts)) or predict(texts)
    db = make_archive(tmp_path / "a.duckdb")
    con = duckdb.connect(str(db), read_only=True)
    texts = [row[0] for row in con.execute("SELECT text FROM messages").fetchall()]
    con.close()
    scan(db, Settings(window_rows=50), classifier=clf, progress=False)
    assert len(texts) == 120 and len(calls) == 3  # windows of 50, 50 and 20 messages
    assert sum(calls) == sum(1 for t in texts if t.strip())
    assert on_main and not any(on_main)
