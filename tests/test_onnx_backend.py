"""The ONNX Runtime backend on a tiny random three-way BERT (built here, no downloads): the same probabilities as
torch, an export built once and reused, rebuilt when stale or damaged, the backend choice and its fallback, and a
real CLI scan with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
import pytest

from screener.classifiers import hf, onnx, onnx_int8
from screener.classifiers.registry import load_classifier
from screener.errors import ConfigError, ModelError
from screener.settings import Settings

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", "was", "good", "bad", "film", "ok", "not",
         "very", "boring", "awful", "acting", "great", "i", "am", "fine", "##s", "##ing", "!", "."]
MAX_LENGTH = 24
TEXTS = ["the movie was good", "bad bad film !", "", "good " * 40, "i am fine .", "Not Very Boring", "éé ok",
         "the acting was awful"]


def make_archive(path: Path) -> Path:
    """Ten users with a dozen messages each over the week before AS_OF, drawn from TEXTS (blank ones included)."""
    from conftest import AS_OF, write_archive

    rng = np.random.default_rng(11)
    rows = [(f"m{i:04d}", f"u{i % 10}", AS_OF - timedelta(hours=float(rng.uniform(1, 160))),
             TEXTS[int(rng.integers(len(TEXTS)))]) for i in range(120)]
    return write_archive(path, rows)


def build_model(folder: Path, seed: int = 0, manifest: dict | None = None) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "screener_model.json").write_text(json.dumps({
        "kind": "hf-seqcls", "name": "tiny-onnx", "max_length": MAX_LENGTH, "cpu_bf16": False,
        "labels": ["negative", "neutral", "positive"], **(manifest or {})}), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def screener_cache(cache, monkeypatch) -> Path:
    monkeypatch.setenv("SCREENER_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture
def exports(monkeypatch) -> list[Path]:
    """Every fp32 export this test makes, by its model folder."""
    made: list[Path] = []
    real = onnx.export_fp32

    def counting(folder, manifest, tmp):
        made.append(Path(folder))
        return real(folder, manifest, tmp)

    monkeypatch.setattr(onnx, "export_fp32", counting)
    return made


def test_onnx_probabilities_equal_torch_and_keep_the_model_id(folder):
    torch_clf = load_classifier(str(folder), device="cpu", backend="torch")
    onnx_clf = load_classifier(str(folder), device="cpu", backend="onnx")
    assert isinstance(onnx_clf, onnx.OnnxClassifier) and onnx_clf.backend == "onnx-fp32"
    assert torch_clf.backend == "torch"
    assert onnx_clf.model_id == torch_clf.model_id
    assert onnx_clf.labels == torch_clf.labels == ("negative", "neutral", "positive")
    got, want = onnx_clf.predict_proba(TEXTS), torch_clf.predict_proba(TEXTS)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 3)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    assert onnx_clf.token_lengths(TEXTS) == torch_clf.token_lengths(TEXTS)
    assert onnx_clf.predict_proba([]).shape == (0, 3)


def test_the_cached_tokenizer_gives_the_token_ids_of_the_transformers_tokenizer(folder):
    torch_clf = load_classifier(str(folder), device="cpu", backend="torch")
    onnx_clf = load_classifier(str(folder), device="cpu", backend="onnx")
    long_text = "good film " * 30 + "boring " * 30 + "awful acting"
    texts = [*TEXTS, long_text, "x" * 5000]
    assert onnx_clf.encode(texts) == hf.encode_texts(torch_clf.tokenizer, texts, MAX_LENGTH,
                                                     hf.max_chars_for(MAX_LENGTH))


def test_scores_do_not_depend_on_batching_or_on_the_remembered_window(folder):
    clf = load_classifier(str(folder), device="cpu", backend="onnx")
    reference = clf.predict_proba(TEXTS)
    clf.token_lengths(TEXTS)
    np.testing.assert_allclose(clf.predict_proba(TEXTS[::-1])[::-1], reference, atol=1e-6)
    clf.batch_size = 2
    np.testing.assert_allclose(clf.predict_proba(TEXTS), reference, atol=1e-6)


def test_the_export_is_built_once_and_a_load_from_the_cache_needs_no_torch(tmp_path, exports, screener_cache):
    model = build_model(tmp_path / "m", seed=3)
    load_classifier(str(model), device="cpu", backend="onnx")
    load_classifier(str(model), device="cpu", backend="onnx")
    assert exports == [model]
    entries = list((screener_cache / "onnx").glob(f"{hf.manifest_model_id(model, json.loads((model / 'screener_model.json').read_text()))}-fp32-*"))
    assert len(entries) == 1 and sorted(p.name for p in entries[0].iterdir()) == ["entry.json", "model.onnx",
                                                                                 "tokenizer.json"]
    code = ("import sys\nfrom screener.classifiers.registry import load_classifier\n"
            f"clf = load_classifier({str(model)!r}, device='cpu', backend='onnx')\n"
            "print(clf.predict_proba(['the movie was good']).shape, 'torch' in sys.modules, "
            "'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "SCREENER_CACHE": str(screener_cache)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(1,", "3)", "False", "False"]


def test_a_stale_cache_key_builds_a_new_export(tmp_path, exports, monkeypatch):
    model = build_model(tmp_path / "m", seed=4)
    load_classifier(str(model), device="cpu", backend="onnx")
    real_versions = onnx.versions
    monkeypatch.setattr(onnx, "versions", lambda: {**real_versions(), "onnxruntime": "0.0.0-other"})
    clf = load_classifier(str(model), device="cpu", backend="onnx")
    assert exports == [model, model]
    torch_clf = load_classifier(str(model), device="cpu", backend="torch")
    np.testing.assert_allclose(clf.predict_proba(TEXTS), torch_clf.predict_proba(TEXTS), atol=1e-5)


def entry_of(model: Path, precision: str = "fp32") -> Path:
    manifest = json.loads((model / "screener_model.json").read_text())
    quantized = onnx.quantization(onnx.smoothing(model, manifest)) if precision == "int8" else None
    return onnx.entry_dir(onnx.entry_record(hf.manifest_model_id(model, manifest), precision, quantized))


def test_a_damaged_cached_export_is_rebuilt(tmp_path, exports):
    model = build_model(tmp_path / "m", seed=5)
    reference = load_classifier(str(model), device="cpu", backend="onnx").predict_proba(TEXTS)
    entry = entry_of(model)
    data = (entry / "model.onnx").read_bytes()
    # Same size, other bytes: only the sha256 tells.
    (entry / "model.onnx").write_bytes(data[:-100] + bytes(100))
    again = load_classifier(str(model), device="cpu", backend="onnx")
    assert exports == [model, model]
    np.testing.assert_allclose(again.predict_proba(TEXTS), reference, atol=1e-6)
    (entry / "entry.json").write_text("{not json", encoding="utf-8")
    load_classifier(str(model), device="cpu", backend="onnx")
    assert exports == [model, model, model]
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_a_killed_export_leaves_no_entry_and_the_next_load_builds_it(tmp_path, monkeypatch, exports):
    model = build_model(tmp_path / "m", seed=6)

    def killed(folder, manifest, tmp):
        (tmp / "model.onnx").write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx, "export_fp32", killed)
    with pytest.raises(KeyboardInterrupt):
        load_classifier(str(model), device="cpu", backend="onnx")
    assert not entry_of(model).exists()
    assert not [p for p in entry_of(model).parent.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    monkeypatch.setenv("SCREENER_CACHE", str(entry_of(model).parent.parent))
    assert isinstance(load_classifier(str(model), device="cpu", backend="onnx"), onnx.OnnxClassifier)


def test_int8_is_another_model_unless_its_manifest_declares_it(folder, tmp_path):
    fp32 = load_classifier(str(folder), device="cpu", backend="onnx-fp32")
    int8 = load_classifier(str(folder), device="cpu", backend="onnx-int8")
    assert int8.backend == "onnx-int8" and int8.model_id != fp32.model_id
    proba = int8.predict_proba(TEXTS)
    assert proba.shape == (len(TEXTS), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(proba, fp32.predict_proba(TEXTS), atol=0.05)
    declared = build_model(tmp_path / "declared", seed=0, manifest={"onnx_precision": "int8"})
    shipped = load_classifier(str(declared), device="cpu", backend="onnx")
    assert shipped.backend == "onnx-int8" and shipped.model_id == fp32.model_id
    assert load_classifier(str(declared), device="cpu", backend="onnx-fp32").model_id == fp32.model_id


def test_the_int8_export_keeps_the_gelu_projections_fp32(folder):
    import onnx as onnx_lib

    load_classifier(str(folder), device="cpu", backend="onnx-int8")
    fp32_graph = onnx_lib.load(str(entry_of(folder) / "model.onnx"), load_external_data=False)
    kept = onnx_int8.fp32_matmuls(fp32_graph)
    assert len(kept) == 2  # one feed-forward down projection per layer
    int8_graph = onnx_lib.load(str(entry_of(folder, "int8") / "model.onnx"), load_external_data=False)
    ops = [node.op_type for node in int8_graph.graph.node]
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    assert {node.name for node in int8_graph.graph.node if node.op_type == "MatMul"} >= set(kept)


def test_auto_runs_onnx_on_the_cpu_and_torch_without_onnxruntime(folder, monkeypatch):
    assert isinstance(load_classifier(str(folder), device="cpu", backend="auto"), onnx.OnnxClassifier)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    assert not onnx.available()
    fallback = load_classifier(str(folder), device="cpu", backend="auto")
    assert isinstance(fallback, hf.HFSequenceClassifier)
    with pytest.raises(ModelError, match="needs ONNX Runtime.*pip install onnxruntime"):
        load_classifier(str(folder), device="cpu", backend="onnx")


def test_auto_keeps_torch_on_a_cpu_with_bf16_matrix_units_unless_the_model_opts_out(folder, monkeypatch):
    manifest = json.loads((folder / "screener_model.json").read_text())
    assert manifest["cpu_bf16"] is False
    monkeypatch.setattr(onnx, "cpuinfo_bf16", lambda: True)
    assert isinstance(load_classifier(str(folder), device="cpu", backend="auto"), onnx.OnnxClassifier)
    assert onnx.select("auto", "cpu", {**manifest, "cpu_bf16": True}) is None
    assert onnx.select("onnx", "cpu", {**manifest, "cpu_bf16": True}) == "fp32"
    monkeypatch.setattr(onnx, "cpuinfo_bf16", lambda: False)
    assert onnx.select("auto", "cpu", {**manifest, "cpu_bf16": True}) == "fp32"


def test_auto_falls_back_to_torch_where_the_export_cannot_be_written(folder, tmp_path, monkeypatch, caplog):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache should be")
    monkeypatch.setenv("SCREENER_CACHE", str(blocked))
    with pytest.raises(ModelError, match="SCREENER_CACHE"):
        load_classifier(str(folder), device="cpu", backend="onnx")
    assert isinstance(load_classifier(str(folder), device="cpu", backend="auto"), hf.HFSequenceClassifier)
    assert "scoring with torch instead" in caplog.text


def test_the_onnx_backend_refuses_a_gpu_and_models_it_cannot_run(folder, tmp_path, monkeypatch):
    from screener.classifiers import device

    monkeypatch.setattr(device, "resolve_device", lambda d: "cuda")
    monkeypatch.setattr(device, "certainly_no_cuda", lambda: False)
    with pytest.raises(ModelError, match="runs on the CPU"):
        load_classifier(str(folder), device="cuda", backend="onnx")
    llm = tmp_path / "llm"
    llm.mkdir()
    (llm / "screener_model.json").write_text(json.dumps({"kind": "llm-labeltoken"}))
    with pytest.raises(ModelError, match="llm-labeltoken"):
        load_classifier(str(llm), device="cpu", backend="onnx")


def test_backend_and_model_threads_are_validated_settings():
    assert Settings().backend == "auto" and Settings().model_threads == 0
    with pytest.raises(ConfigError, match="backend must be one of auto, torch, onnx"):
        Settings(backend="tensorrt")
    with pytest.raises(ConfigError, match="model_threads"):
        Settings(model_threads=-1)


def test_the_session_takes_model_threads_else_the_cores_this_process_may_use(folder, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert load_classifier(str(folder), device="cpu", backend="onnx", threads=1).threads == 1
    assert load_classifier(str(folder), device="cpu", backend="onnx").threads == len(os.sched_getaffinity(0))


def test_the_scan_tokenizes_on_its_reading_thread(keyword_classifier, tmp_path):
    from screener.scan import scan

    threads = []
    lengths = keyword_classifier.token_lengths

    def recording(texts):
        threads.append(threading.current_thread() is threading.main_thread())
        return lengths(texts)

    keyword_classifier.token_lengths = recording
    db = make_archive(tmp_path / "a.duckdb")
    scan(db, Settings(window_rows=7), classifier=keyword_classifier, progress=False)
    assert threads and not any(threads)


AS_OF_TEXT = "2026-03-01T12:00:00+00:00"


def cli_scan(db: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SCREENER_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "screener.cli", "-q", "scan", str(db), "--json", "--no-progress",
                           "--as-of", AS_OF_TEXT, *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_a_cli_scan_with_the_onnx_backend_stores_torchs_scores_and_records_the_backend(folder, tmp_path, cache):
    results = {}
    for backend in ("onnx", "torch"):
        db = make_archive(tmp_path / f"{backend}.duckdb")
        done = cli_scan(db, cache, "--model", str(folder), "--backend", backend, "--model-threads", "1")
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        con = duckdb.connect(str(db), read_only=True)
        try:
            scores = con.execute("SELECT message_id, p_negative, p_neutral, p_positive, label FROM screener_scores "
                                 "ORDER BY message_id").fetchall()
            config = json.loads(con.execute("SELECT config FROM screener_runs").fetchone()[0])
        finally:
            con.close()
        results[backend] = (summary, scores, config)
    (onnx_summary, onnx_scores, onnx_config), (torch_summary, torch_scores, torch_config) = results.values()
    assert onnx_summary["model_id"] == torch_summary["model_id"]
    assert onnx_summary["messages_scored"] == torch_summary["messages_scored"] > 0
    assert onnx_config["backend"] == "onnx-fp32" and torch_config["backend"] == "torch"
    assert onnx_config["model_threads"] == 1
    assert [row[0] for row in onnx_scores] == [row[0] for row in torch_scores]
    assert [row[4] for row in onnx_scores] == [row[4] for row in torch_scores]
    np.testing.assert_allclose([row[1:4] for row in onnx_scores], [row[1:4] for row in torch_scores], atol=1e-5)


def test_a_cli_scan_with_onnx_and_no_onnxruntime_fails_with_a_clear_error(folder, tmp_path, cache):
    db = make_archive(tmp_path / "a.duckdb")
    shadow = tmp_path / "shadow"
    (shadow / "onnxruntime").mkdir(parents=True)
    (shadow / "onnxruntime" / "__init__.py").write_text("raise ImportError('onnxruntime is not installed')\n")
    env_path = f"{shadow}{os.pathsep}{ROOT}"
    env = {**os.environ, "PYTHONPATH": env_path, "SCREENER_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "screener.cli", "scan", str(db), "--no-progress", "--model",
                           str(folder), "--backend", "onnx"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == ModelError.exit_code, done.stderr
    assert "needs ONNX Runtime" in done.stderr and "--backend torch" in done.stderr
    assert "Traceback" not in done.stderr
