"""Teacher labelling (training/teacher.py) with tiny random-weight models: the command line on a three-word
label-token model, and a two-class model's neutral column."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from test_threeway_llm import make_tiny_llama  # noqa: E402

from screener.classifiers.registry import load_classifier  # noqa: E402
from training import teacher  # noqa: E402
from training.data import load_sst2, subsample  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def sources(tmp_path) -> dict:
    sst2 = tmp_path / "sst2"
    sst2.mkdir()
    (sst2 / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"good movie {i}\t1\nbad plot {i}\t0\n"
                                                                  for i in range(5)))
    sms = tmp_path / "sms.tsv"
    sms.write_text("Label\tSMS\nham\tmeeting at six\nspam\tgreat prize\nham\tMeeting  at six\nham\tthe dev one\n")
    s140 = tmp_path / "s140.csv"
    with open(s140, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["target", "ids", "date", "flag", "user", "text"])
        writer.writerow(["0", "1", "d", "NO_QUERY", "someone", "@someone awful movie"])
    dev = tmp_path / "dev.tsv"
    dev.write_text("id\tsource\tlabel\ttext\nd1\tsms\tneutral\tThe dev one\n")
    return {"sst2": sst2, "sms": sms, "s140": s140, "dev": dev}


def label_word_model(tmp_path: Path, words: list[str] | None) -> Path:
    """A model folder scoring with the tiny base alone (no adapter)."""
    base = make_tiny_llama(tmp_path / "base")
    folder = tmp_path / "model"
    folder.mkdir()
    manifest = {"kind": "llm-labeltoken", "base": str(base), "name": "tiny"}
    if words:
        manifest["label_words"] = words
    (folder / "screener_model.json").write_text(json.dumps(manifest))
    return folder


def test_the_teacher_command_writes_three_probabilities_per_text(tmp_path, sources):
    import pyarrow.parquet as pq

    model = label_word_model(tmp_path, ["negative", "neutral", "positive"])
    out = tmp_path / "teacher.parquet"
    cmd = [sys.executable, "-m", "training.teacher", "--model", str(model), "--out", str(out), "--device", "cpu",
           "--sst2", str(sources["sst2"]), "--sms", str(sources["sms"]), "--sentiment140", str(sources["s140"]),
           "--exclude", str(sources["dev"]), "--sst2-fraction", "0.6", "--seed", "5", "--chunk", "4",
           "--summary", str(tmp_path / "summary.json")]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "texts/s" in proc.stderr
    table = pq.read_table(out).to_pydict()
    assert list(table) == ["text", "source", "p_negative", "p_neutral", "p_positive"]
    sst2 = subsample(load_sst2("train", sources["sst2"]), 0.6, 5).texts
    messages = ["meeting at six", "great prize", "@user awful movie"]  # cleaned, once each, no dev text
    assert table["text"] == sst2 + messages
    assert table["source"] == ["sst2"] * 6 + ["sms", "sms", "sentiment140"]
    probs = np.stack([table["p_negative"], table["p_neutral"], table["p_positive"]], axis=1)
    expected = load_classifier(str(model), device="cpu").predict_proba(table["text"])
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rows"] == 9 and summary["sources"]["sms"]["rows"] == 2 and summary["texts_per_s"] > 0
    assert sum(summary["sources"]["sst2"]["top_class_share"].values()) == pytest.approx(1.0)


def test_a_two_class_teacher_has_no_neutral(tmp_path, sources):
    import pyarrow.parquet as pq

    model = label_word_model(tmp_path, None)
    out = tmp_path / "t2.parquet"
    summary = teacher.run(str(model), out, device="cpu", sst2_dir=None, sms=sources["sms"], sentiment140=None,
                          exclude=[sources["dev"]])
    assert summary["model_classes"] == ["negative", "positive"] and summary["rows"] == 2
    table = pq.read_table(out).to_pydict()
    assert table["p_neutral"] == [0.0, 0.0]
    np.testing.assert_allclose(np.add(table["p_negative"], table["p_positive"]), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="not among"):
        teacher.three_way_columns(np.ones((1, 2)), ("negative", "class_1"))


def test_screener_eval_and_compare_on_three_way_data_from_the_command_line(tmp_path, sources):
    """``screener eval`` on a three-way file and ``screener compare`` over a binary, a three-way and the SMS file,
    as real CLI runs, with a three-word label-token model."""
    pytest.importorskip("vaderSentiment")
    pytest.importorskip("textblob")
    model = label_word_model(tmp_path, ["negative", "neutral", "positive"])
    messages = tmp_path / "messages_dev.tsv"
    messages.write_text("id\tsource\tlabel\ttext\na\tsms\tneutral\tmeeting at six\nb\tsms\tnegative\tawful movie\n"
                        "c\tsms\tpositive\tgood movie\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))

    def screener(*args):
        proc = subprocess.run([sys.executable, "-m", "screener.cli", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    result = json.loads(screener("eval", "--model", str(model), "--data", str(messages), "--device", "cpu",
                                 "--json"))
    expected = load_classifier(str(model), device="cpu").predict_proba(["meeting at six", "awful movie",
                                                                        "good movie"])
    predicted = np.argmax(expected, axis=1)
    matrix = np.zeros((3, 3), dtype=int)
    np.add.at(matrix, ([1, 0, 2], predicted), 1)
    assert result["n"] == 3 and result["confusion_matrix"]["matrix"] == matrix.tolist()
    assert result["accuracy"] == pytest.approx(float(np.mean(predicted == [1, 0, 2])))
    assert "macro_f1" in result and "neutral_called_negative" in result

    text = screener("eval", "--model", str(model), "--data", str(messages), "--device", "cpu")
    assert "macro-F1" in text and "neutral called negative" in text

    out = tmp_path / "cmp"
    rows = json.loads(screener("compare", "--model", str(model), "--data", str(sources["sst2"] / "train.tsv"),
                               "--data", str(messages), "--data", str(sources["sms"]), "--out", str(out),
                               "--device", "cpu"))
    assert {(r["label"], r["kind"]) for r in rows} == {
        (name, kind) for name in (str(model), "vader", "textblob") for kind in ("binary", "three-way", "unlabelled")}
    md = (tmp_path / "cmp.md").read_text()
    assert "## Summary" in md and "## sst2/train" in md and "## sms (ham)" in md
    assert (tmp_path / "cmp.html").read_text().count("<svg") == 3 + 2 + 1
