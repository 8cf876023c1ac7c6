"""The smoothed int8 form of an encoder's ONNX export, on a tiny random three-way BERT: smoothing alone keeps the
fp32 function, it evens out each activation's channels, and the model folder's calibration settings are checked,
recorded in the cache entry and, for an int8 the model does not declare, in the scores' model id."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from screener.classifiers import hf, onnx, onnx_int8
from screener.classifiers.registry import load_classifier
from screener.errors import ModelError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from test_onnx_backend import TEXTS, build_model, entry_of  # noqa: E402

CALIBRATION = ["the movie was good", "bad bad film !", "i am fine .", "not very boring", "the acting was awful",
               "great great great acting", "ok", "the film was not good"]


@pytest.fixture(autouse=True)
def screener_cache(tmp_path_factory, monkeypatch) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("SCREENER_CACHE", str(cache))
    return cache


def smoothed_model(folder: Path, alpha: float = 0.85, **manifest) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "calibration.txt").write_text("\n".join(CALIBRATION) + "\n", encoding="utf-8")
    return build_model(folder, seed=3, manifest={"onnx_smoothing": alpha, "onnx_calibration": "calibration.txt",
                                                 **manifest})


def fp32_graph_and_feeds(folder: Path):
    import onnx as onnx_lib

    load_classifier(str(folder), device="cpu", backend="onnx-fp32")
    entry = entry_of(folder)
    text = json.loads((entry / onnx.ENTRY_FILE).read_text())["text"]
    feeds = onnx.calibration_feeds(folder / "calibration.txt", entry / onnx.TOKENIZER_FILE, text)
    return onnx_lib.load(str(entry / onnx.MODEL_FILE)), feeds


def run(model, feed) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        [onnx.OUTPUT], feed)[0]


def test_smoothing_alone_keeps_the_fp32_function(tmp_path):
    import onnx as onnx_lib

    graph, feeds = fp32_graph_and_feeds(smoothed_model(tmp_path / "m"))
    nodes = onnx_int8.quantized_nodes(graph)
    kinds = onnx_int8.matmul_kinds(graph)
    # Two layers: three projections, one attention output, one up and one down projection each.
    assert {kind: len(names) for kind, names in kinds.items()} == {"qkv": 6, "attention_output": 2, "ffn_up": 2,
                                                                    "ffn_down": 2}
    assert set(nodes) == set(kinds["qkv"] + kinds["attention_output"] + kinds["ffn_up"])
    smoothed = onnx_lib.ModelProto()
    smoothed.CopyFrom(graph)
    onnx_int8.smooth(smoothed, nodes, 0.5, feeds)
    onnx_lib.checker.check_model(smoothed)
    for feed in feeds:
        np.testing.assert_allclose(run(smoothed, feed), run(graph, feed), atol=1e-5)
    # One Mul per activation the products read: each layer's hidden state (query, key, value), its attention
    # context and its attention block's output, and in the last layer, which computes the first token only, that
    # token's hidden state (its query) apart: 3 + 4.
    assert sum(node.name.endswith(".smooth") for node in smoothed.graph.node) == 7


def test_alpha_one_gives_every_channel_of_a_smoothed_activation_the_range_one_on_the_calibration(tmp_path):
    graph, feeds = fp32_graph_and_feeds(smoothed_model(tmp_path / "m"))
    nodes = onnx_int8.quantized_nodes(graph)
    onnx_int8.smooth(graph, nodes, 1.0, feeds)
    smoothed = [node.output[0] for node in graph.graph.node if node.name.endswith(".smooth")]
    amax = onnx_int8.activation_absmax(graph, smoothed, feeds)
    for name in smoothed:
        np.testing.assert_allclose(amax[name], 1.0, rtol=1e-5)


def test_a_smoothed_int8_entry_records_its_calibration_and_scores_near_fp32(tmp_path):
    import onnx as onnx_lib

    folder = smoothed_model(tmp_path / "m")
    fp32 = load_classifier(str(folder), device="cpu", backend="onnx-fp32")
    int8 = load_classifier(str(folder), device="cpu", backend="onnx-int8")
    np.testing.assert_allclose(int8.predict_proba(TEXTS), fp32.predict_proba(TEXTS), atol=0.05)
    entry = entry_of(folder, "int8")
    record = json.loads((entry / onnx.ENTRY_FILE).read_text())["record"]
    assert record["quantization"]["smoothing"] == {
        "alpha": 0.85, "calibration_sha256": hashlib.sha256((folder / "calibration.txt").read_bytes()).hexdigest()}
    nodes = onnx_lib.load(str(entry / onnx.MODEL_FILE)).graph.node
    assert {"MatMulInteger", "DynamicQuantizeMatMul"} & {node.op_type for node in nodes}
    assert sum(node.name.endswith(".smooth") for node in nodes) == 7

    # Other calibration texts are another int8 model: a new entry, and (undeclared int8) another model id.
    (folder / "calibration.txt").write_text("\n".join(reversed(CALIBRATION)) + "\nnot good\n", encoding="utf-8")
    again = load_classifier(str(folder), device="cpu", backend="onnx-int8")
    assert entry_of(folder, "int8") != entry and entry_of(folder, "int8").is_dir()
    assert again.model_id not in (int8.model_id, fp32.model_id)


def test_down_smoothing_quantizes_the_down_projections_too_and_is_another_entry(tmp_path):
    import onnx as onnx_lib

    folder = smoothed_model(tmp_path / "m")
    int8 = load_classifier(str(folder), device="cpu", backend="onnx-int8")
    recipe_entry = entry_of(folder, "int8")
    manifest = json.loads((folder / "screener_model.json").read_text())
    (folder / "screener_model.json").write_text(json.dumps({**manifest, "onnx_down_smoothing": 0.95}))
    fp32 = load_classifier(str(folder), device="cpu", backend="onnx-fp32")
    down = load_classifier(str(folder), device="cpu", backend="onnx-int8")
    np.testing.assert_allclose(down.predict_proba(TEXTS), fp32.predict_proba(TEXTS), atol=0.05)
    entry = entry_of(folder, "int8")
    assert entry != recipe_entry and down.model_id != int8.model_id
    quantization = json.loads((entry / onnx.ENTRY_FILE).read_text())["record"]["quantization"]
    assert quantization["fp32"] == "none" and quantization["smoothing"]["ffn_down_alpha"] == 0.95
    graph = onnx_lib.load(str(entry / onnx.MODEL_FILE))
    # Two layers: the seven smoothed activations of the recipe, and each layer's GELU output.
    assert sum(node.name.endswith(".smooth") for node in graph.graph.node) == 9
    assert float_weight_products(onnx_lib.load(str(recipe_entry / onnx.MODEL_FILE))) == 2
    assert float_weight_products(graph) == 0


def float_weight_products(graph) -> int:
    weights = {init.name for init in graph.graph.initializer}
    return sum(node.op_type == "MatMul" and any(i in weights for i in node.input) for node in graph.graph.node)


def test_a_declared_smoothed_int8_is_what_auto_runs_and_keeps_the_model_id(tmp_path):
    folder = smoothed_model(tmp_path / "m", onnx_precision="int8")
    manifest = json.loads((folder / "screener_model.json").read_text())
    clf = load_classifier(str(folder), device="cpu", backend="auto")
    assert clf.backend == "onnx-int8" and clf.model_id == hf.manifest_model_id(folder, manifest)


@pytest.mark.parametrize("settings, message", [
    ({"onnx_smoothing": 1.5, "onnx_calibration": "calibration.txt"}, "onnx_smoothing must be a number in"),
    ({"onnx_smoothing": 0.85}, "onnx_calibration the name of a texts file"),
    ({"onnx_calibration": "calibration.txt"}, "found onnx_smoothing=None"),
    ({"onnx_smoothing": 0.85, "onnx_calibration": "missing.txt"}, "missing.txt, which does not exist"),
    ({"onnx_smoothing": 0.85, "onnx_calibration": "calibration.txt", "onnx_down_smoothing": 0},
     "onnx_down_smoothing must be a number in"),
    ({"onnx_down_smoothing": 0.95}, "needs onnx_smoothing and onnx_calibration too"),
])
def test_bad_smoothing_settings_say_what_was_expected(tmp_path, settings, message):
    folder = build_model(tmp_path / "m", seed=3, manifest=settings)
    (folder / "calibration.txt").write_text("good\n", encoding="utf-8")
    with pytest.raises(ModelError, match=message):
        load_classifier(str(folder), device="cpu", backend="onnx-int8")


def test_empty_calibration_texts_are_an_error(tmp_path):
    folder = smoothed_model(tmp_path / "m")
    (folder / "calibration.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ModelError, match="calibration texts .* are empty: expected one text a line"):
        load_classifier(str(folder), device="cpu", backend="onnx-int8")
