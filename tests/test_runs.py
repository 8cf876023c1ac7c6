"""The run lifecycle: source resolution, the blank-text rule, the tables a run commits, the failure record, and a
finished run opened again for reading."""

from datetime import timedelta

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from conftest import AS_OF, KeywordClassifier, generated_rows, write_archive
from screener import runs
from screener.classifiers.base import BINARY_LABELS, THREE_WAY_LABELS, binary_proba
from screener.errors import InputError, ModelError, StorageError
from screener.scan import scan
from screener.settings import Settings
from screener.store import Source, Store


def test_resolve_source_is_the_table_of_the_database_parquet_files_or_another_duckdb_file(tmp_path):
    db = tmp_path / "r.duckdb"
    settings = Settings(table="chat")
    assert runs.resolve_source(db, None, settings) == Source("chat", parquet=False)
    assert runs.resolve_source(db, str(db), settings) == Source("chat", parquet=False)
    assert runs.resolve_source(db, "a/*.parquet", settings) == Source("a/*.parquet", parquet=True)
    assert runs.resolve_source(db, "s3://b/a", settings) == Source("s3://b/a", parquet=True)
    with pytest.raises(InputError, match="other.duckdb does not exist: expected a DuckDB file"):
        runs.resolve_source(db, str(tmp_path / "other.duckdb"), settings)
    (tmp_path / "other.duckdb").touch()
    assert runs.resolve_source(db, str(tmp_path / "other.duckdb"), settings) == Source(
        str((tmp_path / "other.duckdb").resolve()), parquet=False, archive=True)


def test_blank_means_none_or_only_whitespace():
    assert [runs.is_blank(t) for t in (None, "", " \n\t", "\u3000", " a ")] == [True, True, True, True, False]


def test_scores_table_labels_a_binary_model_negative_from_one_half_on():
    proba = binary_proba(np.array([0.5, 0.4999, 0.9]))
    table = runs.scores_table(["a", "b", "c"], "mid", 4, proba, BINARY_LABELS, threshold=0.5)
    assert table.column("label").to_pylist() == ["negative", "positive", "negative"]
    assert table.column("p_neutral").to_pylist() == [None] * 3
    assert table.column("p_positive").to_pylist() == pytest.approx([0.5, 0.5001, 0.1])
    for name in ("p_negative", "p_neutral", "p_positive"):
        assert table.schema.field(name).type == pa.float32()
    assert table.column("run_id").to_pylist() == [4, 4, 4] and table.column("model_id").to_pylist() == ["mid"] * 3
    empty = runs.scores_table([], "mid", 4, np.empty((0, 2), np.float32), BINARY_LABELS, threshold=0.5)
    assert empty.num_rows == 0 and empty.schema == table.schema


def test_scores_table_reads_classes_by_name_whatever_their_column_order():
    # (positive, negative): the head of a model whose negative_index is 1.
    table = runs.scores_table(["a", "b"], "mid", 1, np.array([[0.7, 0.3], [0.2, 0.8]]), ("positive", "negative"), 0.5)
    assert table.column("p_negative").to_pylist() == pytest.approx([0.3, 0.8])
    assert table.column("label").to_pylist() == ["positive", "negative"]
    three = runs.scores_table(["a"], "mid", 1, np.array([[0.1, 0.6, 0.3]]), ("positive", "negative", "neutral"), 0.5)
    assert [three.column(c).to_pylist() for c in ("p_negative", "p_neutral", "p_positive", "label")] == [
        pytest.approx([0.6]), pytest.approx([0.3]), pytest.approx([0.1]), ["negative"]]


def test_a_three_way_label_is_the_top_class_with_the_threshold_as_an_extra_bar_for_negative():
    proba = np.array([
        [0.5, 0.3, 0.2],    # negative: largest and at the threshold
        [0.45, 0.35, 0.2],  # largest but under the threshold: the larger of the others
        [0.45, 0.1, 0.45],  # under the threshold, positive the larger other class
        [0.4, 0.3, 0.3],    # tie between neutral and positive: neutral
        [0.35, 0.4, 0.25],  # above a low threshold but not the largest class: not negative
        [0.4, 0.4, 0.2],    # tie between negative and neutral: negative above the threshold, as a binary 0.5 is
    ], dtype=np.float32)
    labels = runs.scores_table(list("abcdef"), "mid", 1, proba, THREE_WAY_LABELS, 0.5).column("label")
    assert labels.to_pylist() == ["negative", "neutral", "positive", "neutral", "neutral", "neutral"]
    low = runs.scores_table(list("abcdef"), "mid", 1, proba, THREE_WAY_LABELS, 0.3).column("label")
    assert low.to_pylist() == ["negative", "negative", "negative", "negative", "neutral", "negative"]


def test_scores_table_refuses_classes_it_cannot_store():
    with pytest.raises(ModelError, match="class_1"):
        runs.scores_table(["a"], "mid", 1, np.array([[0.2, 0.3, 0.5]]), ("negative", "class_1", "class_2"), 0.5)


def test_skipped_table_records_empty_text():
    table = runs.skipped_table(["a", "b"], "mid", 2)
    assert table.to_pylist() == [{"message_id": "a", "model_id": "mid", "reason": "empty_text", "run_id": 2},
                                 {"message_id": "b", "model_id": "mid", "reason": "empty_text", "run_id": 2}]


def run_records(db):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT run_id, status, error FROM screener_runs ORDER BY run_id").fetchall()
    finally:
        con.close()


def test_guard_records_the_failure_and_turns_a_duckdb_error_into_a_storage_error(tmp_path):
    db = write_archive(tmp_path / "a.duckdb", generated_rows(n_users=1, per_user=2))
    settings = Settings()
    src = runs.resolve_source(db, None, settings)
    with Store(db, settings) as store:
        runs.prepare(store, src)
        run = runs.begin(store, settings, src, "m", "mid", AS_OF, False, 0.0)
        with pytest.raises(StorageError, match="the scan failed on .*disk gone.*Earlier results are intact"):
            with runs.guard(store, run):
                raise duckdb.IOException("disk gone")
        second = runs.begin(store, settings, src, "m", "mid", AS_OF, False, 0.0)
        with pytest.raises(KeyError):
            with runs.guard(store, second):
                raise KeyError("other")
    assert run_records(db) == [(1, "failed", "IOException: disk gone"), (2, "failed", "KeyError: 'other'")]


def test_prepare_marks_a_run_left_running_as_interrupted(tmp_path):
    db = write_archive(tmp_path / "a.duckdb", generated_rows(n_users=1, per_user=2))
    settings = Settings()
    src = runs.resolve_source(db, None, settings)
    with Store(db, settings) as store:
        runs.prepare(store, src)
        runs.begin(store, settings, src, "m", "mid", AS_OF, False, 0.0)
    with Store(db, settings) as store:
        runs.prepare(store, src)
    assert run_records(db) == [(1, "interrupted", None)]


def test_open_run_reads_the_archive_the_way_the_run_did_and_picks_the_latest_completed_run(tmp_path):
    db = tmp_path / "a.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE chat (mid VARCHAR, who VARCHAR, sent TIMESTAMPTZ, body VARCHAR)")
    con.executemany("INSERT INTO chat VALUES (?, ?, ?, ?)", generated_rows(n_users=3, per_user=6))
    con.close()
    settings = Settings(table="chat", id_column="mid", user_column="who", time_column="sent", text_column="body",
                        min_messages=1)
    first = scan(db, settings, as_of=AS_OF, classifier=KeywordClassifier(), progress=False)
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO chat VALUES ('late', 'u09', ?, 'bad')", [AS_OF - timedelta(hours=1)])
    con.close()
    second = scan(db, settings, as_of=AS_OF, classifier=KeywordClassifier(), progress=False)
    assert (first.run_id, second.run_id) == (1, 2)

    # No settings given: the table and columns come from the run record, not from the defaults.
    with runs.open_run(db) as opened:
        assert opened.run_id == 2
        assert opened.store.scalar("source_max_time") == AS_OF - timedelta(hours=1)
    with runs.open_run(db, 1) as opened:
        assert opened.run_id == 1 and opened.store.settings.text_column == "body"


def test_open_run_names_a_missing_run_and_a_database_without_a_completed_run(tmp_path, archive):
    with Store(archive, Settings()) as store:
        store.ensure_schema()
    with pytest.raises(InputError, match="has no completed scan yet"):
        with runs.open_run(archive):
            pass
    scan(archive, Settings(), as_of=AS_OF, classifier=KeywordClassifier(), progress=False)
    with pytest.raises(InputError, match="has no run 7"):
        with runs.open_run(archive, 7):
            pass
    with pytest.raises(InputError, match="has no screener results"):
        with runs.open_run(write_archive(tmp_path / "fresh.duckdb", [])):
            pass
