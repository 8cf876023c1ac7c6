"""Three-way data (training/data.py): message files, SST-2 in the three-way space, the unlabelled message texts
with the development set left out, a recipe's mix, and the cleaning that keeps user names out."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from screener.classifiers.base import BINARY_LABELS, THREE_WAY_LABELS
from training.data import (SENTIMENT140_FILE, SMS_FILE, Labelled, clean_message, load_sst2, load_three_way,
                           read_eval_set, read_labelled, read_table, subsample, text_key, training_rows,
                           unlabelled_messages)

REPO_LABELS = Path(__file__).resolve().parents[1] / "training" / "labels"


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def messages_file(path, rows):
    return write(path, "id\tsource\tlabel\ttext\n" + "".join(f"m-{i}\tsms\t{y}\t{t}\n" for i, (y, t) in
                                                            enumerate(rows)))


def test_clean_message_replaces_handles_and_links_and_collapses_space():
    assert clean_message("  @Bob_1 see https://t.co/x?a=1  and www.example.com/p \t now @al ") == \
        "@user see http://url and http://url now @user"
    assert clean_message("mail me at a@b.com") == "mail me at a@user.com"
    assert text_key("Hello   WORLD ") == "hello world"


def test_word_labels_with_neutral_are_three_way_and_01_labels_are_sst2(tmp_path):
    three = read_labelled(messages_file(tmp_path / "m.tsv", [("neutral", "ok"), ("negative", "ugh"),
                                                            ("positive", "yay")]))
    assert three.classes == THREE_WAY_LABELS and three.labels == [1, 0, 2]
    two_words = read_labelled(messages_file(tmp_path / "b.tsv", [("positive", "yay"), ("negative", "ugh")]))
    assert two_words.classes == BINARY_LABELS and two_words.labels == [1, 0]
    sst = read_labelled(write(tmp_path / "s.tsv", 'sentence\tlabel\na "quoted" film\t1\nbad\t0\n'))
    assert sst.classes == BINARY_LABELS and sst.labels == [1, 0] and sst.texts[0] == 'a "quoted" film'


def test_sst2_in_the_three_way_space_is_negative_0_positive_2(tmp_path):
    write(tmp_path / "train.tsv", "sentence\tlabel\ngood\t1\nbad\t0\n")
    rows = load_sst2("train", tmp_path).in_classes(THREE_WAY_LABELS)
    assert rows.labels == [2, 0] and rows.classes == THREE_WAY_LABELS
    with pytest.raises(ValueError, match="class\\(es\\) \\['neutral'\\]"):
        Labelled(["ok"], [1], THREE_WAY_LABELS).in_classes(BINARY_LABELS)


def test_message_files_need_the_three_words(tmp_path):
    assert load_three_way(messages_file(tmp_path / "a.tsv", [("positive", "yay")])).labels == [2]
    with pytest.raises(ValueError, match="row 2: label 'meh'"):
        load_three_way(messages_file(tmp_path / "b.tsv", [("neutral", "ok"), ("meh", "hm")]))
    with pytest.raises(ValueError, match="line 2 has 3 fields"):
        read_table(write(tmp_path / "c.tsv", "text\tlabel\na\tb\tc\n"), "data file")


def test_subsample_is_seeded_keeps_order_and_is_the_identity_at_one():
    rows = Labelled([str(i) for i in range(100)], [i % 2 for i in range(100)])
    half = subsample(rows, 0.5, seed=3)
    assert len(half) == 50 and half.texts == sorted(half.texts, key=int)
    assert subsample(rows, 0.5, seed=3) == half and subsample(rows, 0.5, seed=4) != half
    assert subsample(rows, 1.0, seed=3) is rows


@pytest.fixture
def sources(tmp_path):
    sms = write(tmp_path / "sms.tsv", "Label\tSMS\nham\tsee you at 6\nspam\tWIN a prize now\nham\tSee you  at 6\n"
                                      "ham\tThe Dev Text\n")
    s140 = tmp_path / "s140.csv"
    with open(s140, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["target", "ids", "date", "flag", "user", "text"])
        writer.writerow(["0", "1", "d", "NO_QUERY", "secretuser1", "@secretuser2 my car broke http://x.y/z"])
        writer.writerow(["4", "2", "d", "NO_QUERY", "secretuser3", "   "])
        writer.writerow(["4", "3", "d", "NO_QUERY", "secretuser4", 'so "happy", today'])
    dev = messages_file(tmp_path / "dev.tsv", [("neutral", "the dev text")])
    return sms, s140, dev


def test_unlabelled_messages_are_cleaned_deduplicated_and_leave_out_dev_texts(sources):
    sms, s140, dev = sources
    got = unlabelled_messages(sms, s140, exclude=[dev])
    assert got.texts == ["see you at 6", "WIN a prize now", "@user my car broke http://url", 'so "happy", today']
    assert got.sources == ["sms", "sms", "sentiment140", "sentiment140"]
    assert "secretuser" not in " ".join(got.texts)
    assert len(unlabelled_messages(sms, None, exclude=[])) == 3  # the dev text is back; no Sentiment140


def test_sms_collection_is_an_unlabelled_eval_set_of_its_ham(sources):
    sms, _, dev = sources
    ham = read_eval_set(sms)
    assert ham.labels is None and ham.texts == ["see you at 6", "See you  at 6", "The Dev Text"]
    assert read_eval_set(dev).classes == THREE_WAY_LABELS


def test_training_rows_mix_a_share_of_sst2_with_repeated_messages_and_no_dev_text(tmp_path):
    data = tmp_path / "sst2"
    data.mkdir()
    write(data / "train.tsv", "sentence\tlabel\n" + "".join(f"phrase {i}\t{i % 2}\n" for i in range(10)))
    msgs = messages_file(tmp_path / "train.tsv", [("neutral", "on my way"), ("negative", "THE DEV TEXT")])
    dev = messages_file(tmp_path / "dev.tsv", [("neutral", "the dev text")])
    recipe = {"sst2_fraction": 0.5, "seed": 1, "messages": str(msgs), "messages_repeat": 3, "exclude": str(dev)}
    rows = training_rows(recipe, data, THREE_WAY_LABELS)
    assert rows.classes == THREE_WAY_LABELS
    assert len(rows) == 5 + 3 and rows.texts[5:] == ["on my way"] * 3 and rows.labels[5:] == [1] * 3
    assert set(rows.labels[:5]) <= {0, 2}
    assert [int(t.split()[1]) % 2 for t in rows.texts[:5]] == [y // 2 for y in rows.labels[:5]]
    with pytest.raises(ValueError, match="neutral"):
        training_rows(recipe, data, BINARY_LABELS)


shared = pytest.mark.skipif(not (SMS_FILE.is_file() and SENTIMENT140_FILE.is_file()),
                            reason="needs ../shared/data (SMS and Sentiment140)")


@shared
def test_the_labelled_files_hold_the_sources_texts_cleaned_exactly_so():
    sms = read_table(SMS_FILE, "SMS file")["SMS"]
    tweets = read_table(SENTIMENT140_FILE, "Sentiment140 file")["text"]
    for name in ("messages_train.tsv", "messages_dev.tsv"):
        columns = read_table(REPO_LABELS / name, "labels")
        for row_id, text in zip(columns["id"], columns["text"]):
            kind, index = row_id.split("-")
            raw = sms[int(index)] if kind == "sms" else tweets[int(index)]
            assert clean_message(raw) == text, row_id


@shared
def test_the_real_unlabelled_messages_leave_out_every_dev_text_and_every_handle():
    got = unlabelled_messages()
    dev = read_labelled(REPO_LABELS / "messages_dev.tsv")
    keys = {t.casefold() for t in got.texts}
    assert len(keys) == len(got.texts) > 20000
    assert not keys & {text_key(t) for t in dev.texts}
    handles = {h for t in got.texts for h in re.findall(r"@\w+", t)}
    assert handles == {"@user"}
