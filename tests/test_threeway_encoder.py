"""Three-class encoder training and distillation (training/encoder.py, training/distill.py) on a tiny random BERT:
SST-2 rows, hand-labelled messages and a teacher file's unlabelled message texts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from screener.classifiers.base import THREE_WAY_LABELS  # noqa: E402
from screener.classifiers.registry import MANIFEST, load_classifier  # noqa: E402
from screener.errors import ConfigError  # noqa: E402
from training import encoder  # noqa: E402
from training.distill import read_teacher, teacher_targets  # noqa: E402

POSITIVE = ["good", "great", "love"]
NEGATIVE = ["bad", "awful", "hate"]
NEUTRAL_LABELLED = ["meeting", "call"]  # neutral in the hand-labelled messages
NEUTRAL_TEACHER = ["tuesday", "later"]  # neutral only in the teacher's unlabelled texts
WORDS = POSITIVE + NEGATIVE + NEUTRAL_LABELLED + NEUTRAL_TEACHER + ["the", "movie", "was", "is", "very", "it"]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("base")
    vocab = folder.parent / "vocab3.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n", encoding="utf-8")
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(folder))
    BertTokenizer(vocab=str(vocab)).save_pretrained(str(folder))
    return folder


def messages(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("id\tsource\tlabel\ttext\n" + "".join(f"m{i}\tsms\t{y}\t{t}\n" for i, (y, t) in enumerate(rows)),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)

    def sentence(words):
        return " ".join(["the", "movie", "was"][: int(rng.integers(1, 4))] + list(rng.choice(words, 2)))

    sst2 = [(sentence(POSITIVE if i % 2 else NEGATIVE), i % 2) for i in range(24)]
    (root / "sst2").mkdir()
    (root / "sst2" / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in sst2))
    (root / "sst2" / "dev.tsv").write_text("sentence\tlabel\nvery bad\t0\nvery good\t1\n")
    labelled = ([("neutral", sentence(NEUTRAL_LABELLED)) for _ in range(6)]
                + [("negative", sentence(NEGATIVE)) for _ in range(3)]
                + [("positive", sentence(POSITIVE)) for _ in range(3)])
    train = messages(root / "messages_train.tsv", labelled)
    dev = messages(root / "messages_dev.tsv", [("neutral", "it is tuesday later"), ("neutral", "later tuesday"),
                                               ("neutral", "the call meeting"), ("negative", "it was awful hate"),
                                               ("positive", "it was great love"), ("negative", "bad bad")])
    unlabelled = [sentence(NEUTRAL_TEACHER) for _ in range(12)]
    rows = ([(t, "sst2", [0.9, 0.1, 0.0] if y == 0 else [0.0, 0.1, 0.9]) for t, y in sst2]
            + [(t, "sms", [0.1, 0.8, 0.1]) for t in unlabelled]
            + [(labelled[0][1], "sms", [0.2, 0.6, 0.2]),  # a hand-labelled text: blended, not added again
               ("IT IS Tuesday later", "sms", [0.1, 0.8, 0.1])])  # a dev text: never trained on
    teacher = root / "teacher.parquet"
    pq.write_table(pa.table({"text": [r[0] for r in rows], "source": [r[1] for r in rows],
                             "p_negative": [r[2][0] for r in rows], "p_neutral": [r[2][1] for r in rows],
                             "p_positive": [r[2][2] for r in rows]}), teacher)
    return {"root": root, "data": root / "sst2", "train": train, "dev": dev, "teacher": teacher,
            "sst2": sst2, "labelled": labelled, "unlabelled": list(dict.fromkeys(unlabelled))}


def recipe(files, **changes) -> dict:
    return {"kind": "encoder", "num_labels": 3, "method": "lora", "epochs": 20, "batch_size": 8,
            "learning_rate": 1e-2, "warmup_ratio": 0.0, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
            "max_length": 16, "target_modules": ["query", "value", "output.dense", "intermediate.dense"],
            "messages": str(files["train"]), "messages_repeat": 2, "exclude": str(files["dev"]),
            "teacher": str(files["teacher"]), "teacher_unlabelled": True, "distill_alpha": 0.5,
            "teacher_coverage": 0.6,
            "dev": str(files["dev"]), "select_best": True, "select_metric": "macro_f1", **changes}


def test_training_set_blends_teacher_and_labels_and_adds_only_new_unlabelled_texts(files):
    cfg = encoder.for_trainer(recipe(files), "encoder")
    data = encoder.training_set(cfg, str(files["data"]), THREE_WAY_LABELS)
    n_sst2, n_msg = len(files["sst2"]), len(files["labelled"])
    assert data.counts == {"labelled": n_sst2 + 2 * n_msg, "unlabelled": len(files["unlabelled"])}
    assert data.texts[n_sst2 + 2 * n_msg:] == files["unlabelled"]
    assert "IT IS Tuesday later" not in data.texts
    # a text the teacher scored in other case and spacing is matched to it
    np.testing.assert_allclose(teacher_targets(read_teacher(files["teacher"]), ["it  is TUESDAY later"], [1],
                                               THREE_WAY_LABELS), [[0.1, 0.8, 0.1]], atol=1e-6)
    assert data.labels[:n_sst2] == [2 * y for _, y in files["sst2"]]  # SST-2 positive is class 2
    # an SST-2 negative row: 0.5 * teacher (0.9, 0.1, 0) + 0.5 * one-hot negative
    first_neg = next(i for i, (_, y) in enumerate(files["sst2"]) if y == 0)
    np.testing.assert_allclose(data.targets[first_neg], [0.95, 0.05, 0.0], atol=1e-6)
    # the hand-labelled neutral text the teacher also scored, and a text without a teacher row
    np.testing.assert_allclose(data.targets[n_sst2], [0.1, 0.8, 0.1], atol=1e-6)
    np.testing.assert_allclose(data.targets[n_sst2 + 1], [0.0, 1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(data.targets[-1], [0.1, 0.8, 0.1], atol=1e-6)  # teacher alone
    np.testing.assert_allclose(data.targets.sum(axis=1), 1.0, atol=1e-6)


def test_teacher_targets_for_a_two_class_student_count_neutral_as_not_negative(files):
    teacher = read_teacher(files["teacher"])
    text = files["unlabelled"][0]
    np.testing.assert_allclose(teacher_targets(teacher, [text], [-1], ("negative", "positive")), [[0.1, 0.9]])
    with pytest.raises(ValueError, match="no probabilities for the unlabelled text"):
        teacher_targets(teacher, ["never scored"], [-1], THREE_WAY_LABELS)


@pytest.fixture(scope="module")
def student(tiny_base, files, tmp_path_factory) -> Path:
    return encoder.train(str(tiny_base), recipe(files), str(files["data"]),
                         str(tmp_path_factory.mktemp("student") / "out"))


def test_a_three_class_student_learns_neutral_from_the_teachers_unlabelled_texts(student, files):
    manifest = json.loads((student / MANIFEST).read_text())
    assert (manifest["num_labels"], manifest["labels"], manifest["negative_index"]) == \
        (3, list(THREE_WAY_LABELS), 0)
    training = manifest["training"]
    assert training["dev_set"] == "messages_dev" and len(training["dev_history"]) == 20
    assert set(training["dev_history"][0]["also"]) == {"sst2_dev"}
    best = max(h["macro_f1"] for h in training["dev_history"])
    assert training["dev"]["macro_f1"] == best
    classifier = load_classifier(str(student), device="cpu")
    assert tuple(classifier.labels) == THREE_WAY_LABELS
    dev = ["it is tuesday later", "later tuesday", "the call meeting", "it was awful hate", "it was great love",
           "bad bad"]
    probs = classifier.predict_proba(dev)
    assert probs.shape == (6, 3)
    # "tuesday" and "later" are neutral only in the teacher's unlabelled texts
    assert np.argmax(probs, axis=1).tolist() == [1, 1, 1, 0, 2, 0]
    assert training["dev"]["macro_f1"] == 1.0


def test_three_way_settings_that_cannot_work_are_refused(tiny_base, files, tmp_path):
    with pytest.raises(ConfigError, match="three-way messages need num_labels = 3"):
        encoder.train(str(tiny_base), recipe(files, num_labels=2), str(files["data"]), str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="teacher_unlabelled needs a teacher file"):
        encoder.train(str(tiny_base), recipe(files, teacher=""), str(files["data"]), str(tmp_path / "b"))
    with pytest.raises(ConfigError, match="macro_f1 needs a three-way dev file"):
        encoder.train(str(tiny_base), recipe(files, dev="", messages="", teacher_unlabelled=False,
                                             teacher=""),
                      str(files["data"]), str(tmp_path / "c"))
    with pytest.raises(ValueError, match="covers 32 of 48 labelled training texts"):
        encoder.train(str(tiny_base), recipe(files, teacher_coverage=0.95), str(files["data"]), str(tmp_path / "d"))
    assert not any(tmp_path.iterdir())
