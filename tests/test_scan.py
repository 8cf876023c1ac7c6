"""The scan pipeline: incremental scoring, Parquet input, skipped rows, model changes, schema and input errors,
batching and the classifier's lifetime."""

import json
from datetime import timedelta

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import AS_OF, KeywordClassifier, generated_rows, score_counts, write_archive
from screener.errors import InputError, ModelError, SchemaError
from screener.scan import scan, whole_windows
from screener.settings import Settings


def run(db, **kw):
    kw.setdefault("classifier", KeywordClassifier())
    return scan(db, kw.pop("settings", Settings()), as_of=AS_OF, progress=False, **kw)


def test_second_scan_scores_nothing_and_added_messages_alone_are_scored_next(archive):
    first = run(archive)
    assert first.messages_scored == 120 and first.users == 12
    second = run(archive)
    assert second.messages_scored == 0
    assert (second.users, second.users_flagged) == (first.users, first.users_flagged)
    con = duckdb.connect(str(archive))
    con.executemany("INSERT INTO messages VALUES (?, ?, ?, ?)",
                    [(f"new{i}", "u99", AS_OF - timedelta(hours=i + 1), "bad again") for i in range(7)])
    con.close()
    clf = KeywordClassifier()
    third = run(archive, classifier=clf)
    assert third.messages_scored == 7
    assert score_counts(archive) == (127, 127)
    assert third.users == 13 and third.users_flagged == first.users_flagged + 1


def test_a_scan_hashes_the_archive_ids_once(archive, monkeypatch):
    from screener.store import Store

    calls = []
    original = Store.prepare_candidates
    monkeypatch.setattr(Store, "prepare_candidates", lambda self, con: calls.append(con) or original(self, con))
    assert run(archive).messages_scored == 120
    assert len(calls) == 1


def test_pending_messages_stream_the_earliest_copy_of_each_id_and_every_unique_row(tmp_path):
    t = AS_OF - timedelta(hours=3)
    rows = [("a", "u1", t, "only copy"),
            ("b", "u1", t + timedelta(hours=1), "later copy of b"), ("b", "u1", t, "earliest copy of b"),
            ("c", "u2", t, "zz same time"), ("c", "u2", t, "aa same time, first by text"),
            ("d", "u2", None, "no time"), ("d", "u2", t, "timed copy of d")]
    db = write_archive(tmp_path / "a.duckdb", rows)
    from screener.runs import resolve_source
    from screener.store import Store

    with Store(db, Settings()) as store:
        store.ensure_schema()
        store.attach_source(resolve_source(db, None, Settings()))
        streamed = sorted(r for b in store.pending_messages("m", 2) for r in zip(*b.to_pydict().values()))
        assert streamed == [("a", "only copy"), ("b", "earliest copy of b"), ("c", "aa same time, first by text"),
                            ("d", "timed copy of d")]
        assert store.pending_count("m") == 4
        assert sorted(store.con.execute("SELECT message_id, text FROM screener_source").fetchall()) == streamed


def test_window_rows_smaller_than_archive_commits_in_several_windows(archive):
    result = run(archive, settings=Settings(window_rows=16, batch_size=5))
    assert result.messages_scored == 120 and score_counts(archive) == (120, 120)


def test_parquet_glob_input_writes_results_to_separate_db(tmp_path):
    rows = generated_rows()
    table = pa.table({"message_id": [r[0] for r in rows], "user_id": [r[1] for r in rows],
                      "sent_at": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
                      "text": [r[3] for r in rows]})
    (tmp_path / "archive").mkdir()
    pq.write_table(table.slice(0, 50), tmp_path / "archive" / "part-0.parquet")
    pq.write_table(table.slice(50), tmp_path / "archive" / "part-1.parquet")
    results = tmp_path / "results.duckdb"
    parquet = run(results, source=str(tmp_path / "archive" / "*.parquet"))
    duck = run(write_archive(tmp_path / "same.duckdb", rows))
    assert parquet.messages_scored == 120
    assert (parquet.users, parquet.users_flagged) == (duck.users, duck.users_flagged)


def test_results_of_a_parquet_scan_open_read_only_for_flags_and_report(tmp_path):
    from click.testing import CliRunner

    from screener.cli import main

    rows = generated_rows()
    table = pa.table({"message_id": [r[0] for r in rows], "user_id": [r[1] for r in rows],
                      "sent_at": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
                      "text": [r[3] for r in rows]})
    pq.write_table(table, tmp_path / "archive.parquet")
    results = tmp_path / "results.duckdb"
    flagged = run(results, source=str(tmp_path / "archive.parquet")).users_flagged
    assert flagged > 0
    runner = CliRunner()
    flags = runner.invoke(main, ["flags", str(results), "--json"])
    assert flags.exit_code == 0, flags.output
    assert len(json.loads(flags.stdout)) == flagged
    report = runner.invoke(main, ["report", str(results), "-o", str(tmp_path / "r.html")])
    assert report.exit_code == 0, report.output


def test_missing_parquet_files_are_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no Parquet files match"):
        run(tmp_path / "r.duckdb", source=str(tmp_path / "none" / "*.parquet"))


def test_blank_texts_are_skipped_counted_and_not_reread(tmp_path):
    rows = generated_rows(n_users=2, per_user=3) + [
        ("e1", "u00", AS_OF - timedelta(hours=1), ""), ("e2", "u00", AS_OF - timedelta(hours=1), "   \n"),
        ("e3", "u01", AS_OF - timedelta(hours=1), None)]
    db = write_archive(tmp_path / "a.duckdb", rows)
    first = run(db)
    assert first.messages_scored == 6
    assert first.skipped_by_reason == {"empty_text": 3} and first.messages_skipped == 3
    second = run(db)
    assert second.messages_scored == 0 and second.skipped_by_reason == {"empty_text": 3}


def test_duplicate_ids_null_users_and_null_times_are_counted_not_lost(tmp_path):
    rows = generated_rows(n_users=1, per_user=3) + [
        ("m000000", "u00", AS_OF - timedelta(hours=2), "dup of first id"),
        ("n1", None, AS_OF - timedelta(hours=1), "bad, no user"),
        ("n2", "u00", None, "bad, no time"),
        (None, "u00", AS_OF - timedelta(hours=1), "no id")]
    db = write_archive(tmp_path / "a.duckdb", rows)
    result = run(db)
    assert result.messages_total == 7
    assert result.messages_scored == 5          # 3 + no-user + no-time; the duplicate and the id-less are not
    assert result.skipped_by_reason == {"duplicate_message_id": 1, "null_message_id": 1}
    assert result.not_aggregated_by_reason == {"null_user_id": 1, "null_sent_at": 1}
    assert (result.messages_with_score, result.messages_skipped) == (5, 2)
    assert score_counts(db) == (5, 5)


def test_model_change_needs_rescore_and_rescore_scores_everything_again(archive):
    run(archive)
    other = KeywordClassifier(word="good")
    with pytest.raises(ModelError, match="--rescore"):
        run(archive, classifier=other)
    rescored = run(archive, classifier=other, rescore=True)
    assert rescored.messages_scored == 120 and rescored.rescored
    con = duckdb.connect(str(archive), read_only=True)
    by_model = dict(con.execute("SELECT model_id, count(*) FROM screener_scores GROUP BY 1").fetchall())
    con.close()
    assert by_model == {KeywordClassifier().model_id: 120, other.model_id: 120}


def test_newer_schema_version_is_refused_without_changes(archive):
    run(archive)
    con = duckdb.connect(str(archive))
    con.execute("UPDATE screener_meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(SchemaError, match="version 99.*Upgrade screener"):
        run(archive)


@pytest.mark.parametrize("settings, fragment", [
    (Settings(table="msgs"), "no table 'msgs'.*found tables: \\['messages'\\]"),
    (Settings(text_column="body"), "missing column\\(s\\) text -> 'body'"),
])
def test_wrong_table_or_column_names_the_problem(archive, settings, fragment):
    with pytest.raises(InputError, match=fragment):
        run(archive, settings=settings)


def test_wrong_column_type_names_column_and_type(tmp_path):
    db = tmp_path / "a.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE messages (message_id INT, user_id INT, sent_at INT, text VARCHAR)")
    con.close()
    with pytest.raises(InputError, match="column 'sent_at' \\(sent_at\\) has type INTEGER"):
        run(db)


def test_empty_archive_completes_with_zero_counts(tmp_path):
    db = write_archive(tmp_path / "a.duckdb", [])
    result = run(db)
    assert (result.messages_total, result.messages_scored, result.users, result.users_flagged) == (0, 0, 0, 0)


def test_run_records_completed_status_and_config(archive):
    result = run(archive)
    con = duckdb.connect(str(archive), read_only=True)
    status, config, model = con.execute(
        "SELECT status, config, model_id FROM screener_runs WHERE run_id = ?", [result.run_id]).fetchone()
    con.close()
    assert status == "completed" and '"min_ratio": 0.25' in config and model == KeywordClassifier().model_id


class WindowRecorder(KeywordClassifier):
    """Records each call's size; fails on call ``fail_on`` (counting from 1) when given."""

    sizes_own_batches = True

    def __init__(self, min_window_rows: int = 0, fail_on: int | None = None) -> None:
        super().__init__()
        self.min_window_rows = min_window_rows
        self.fail_on = fail_on
        self.sizes: list[int] = []

    def predict_proba(self, texts):
        self.sizes.append(len(texts))
        if len(self.sizes) == self.fail_on:
            raise RuntimeError("scoring failed")
        return super().predict_proba(texts)


def test_classifier_asking_for_larger_windows_gets_them(archive):
    clf = WindowRecorder(min_window_rows=50)
    result = run(archive, classifier=clf, settings=Settings(window_rows=16))
    assert clf.sizes == [50, 50, 20]
    assert result.messages_scored == 120 and score_counts(archive) == (120, 120)


def test_failure_scoring_a_window_keeps_the_windows_before_it_and_the_rerun_scores_the_rest(archive):
    # The third window fails while the second one's commit may still be running: both earlier windows land.
    with pytest.raises(RuntimeError, match="scoring failed"):
        run(archive, classifier=WindowRecorder(fail_on=3), settings=Settings(window_rows=16))
    assert score_counts(archive) == (32, 32)
    status = duckdb.connect(str(archive)).sql("SELECT status FROM screener_runs").fetchall()
    assert status == [("failed",)]
    clf = WindowRecorder()
    assert run(archive, classifier=clf, settings=Settings(window_rows=16)).messages_scored == 88
    assert score_counts(archive) == (120, 120) and sum(clf.sizes) == 88


def test_partial_record_batches_are_regrouped_into_whole_windows():
    sizes, start, batches = [13, 50, 7, 50], 0, []
    for size in sizes:
        batches.append(pa.record_batch({"message_id": [f"m{i}" for i in range(start, start + size)]}))
        start += size
    reader = pa.RecordBatchReader.from_batches(batches[0].schema, batches)
    windows = list(whole_windows(reader, 50))
    assert [w.num_rows for w in windows] == [50, 50, 20]
    assert sum((w.column("message_id").to_pylist() for w in windows), []) == [f"m{i}" for i in range(120)]


class BatchRecorder(KeywordClassifier):
    """Records the texts of each model call."""

    def __init__(self, token_budget: int) -> None:
        super().__init__()
        self.token_budget = token_budget
        self.batches: list[list[str]] = []

    def predict_proba(self, texts):
        self.batches.append(list(texts))
        return super().predict_proba(texts)


def test_local_scan_packs_batches_by_the_classifiers_token_budget_and_batch_size(tmp_path):
    when = AS_OF - timedelta(hours=1)
    texts = ["w w w w w", "w", "w w", "w w w", "w", "", "w"]
    db = write_archive(tmp_path / "a.duckdb", [(f"m{i}", "u", when, t) for i, t in enumerate(texts)])
    clf = BatchRecorder(token_budget=4)
    # Shortest first, the blank text skipped: word counts 1, 1, 1, 2, 3, 5. A batch holds two rows (batch_size),
    # so the third one-word text opens a batch that takes the two-word one (2 rows x 2 words, the budget of 4);
    # three or five words exceed the budget in any pair, so each goes alone.
    result = run(db, classifier=clf, settings=Settings(batch_size=2))
    assert clf.batches == [["w", "w"], ["w", "w w"], ["w w w"], ["w w w w w"]]
    assert result.messages_scored == 6 and result.skipped_by_reason == {"empty_text": 1}


def test_a_loaded_classifier_is_closed_and_a_passed_one_is_left_open(archive, monkeypatch):
    from screener.classifiers import registry

    loaded = KeywordClassifier()
    monkeypatch.setattr(registry, "load_classifier", lambda name, device, **_: loaded)
    scan(archive, Settings(), as_of=AS_OF, progress=False)
    assert loaded.closed == 1
    passed = KeywordClassifier()
    run(archive, classifier=passed)
    assert passed.closed == 0


def test_a_loaded_classifier_is_closed_before_the_run_is_aggregated(archive, monkeypatch):
    from screener import runs
    from screener.classifiers import registry

    loaded = KeywordClassifier()
    monkeypatch.setattr(registry, "load_classifier", lambda name, device, **_: loaded)
    complete = runs.complete
    closed_then = []

    def recording(*args, **kwargs):
        closed_then.append(loaded.closed)
        return complete(*args, **kwargs)

    monkeypatch.setattr(runs, "complete", recording)
    result = scan(archive, Settings(), as_of=AS_OF, progress=False)
    assert closed_then == [1] and loaded.closed == 1
    assert result.messages_scored == 120 and result.users == 12


def test_a_loaded_classifier_is_closed_when_the_scan_fails(archive, monkeypatch):
    from screener.classifiers import registry

    loaded = WindowRecorder(fail_on=1)
    monkeypatch.setattr(registry, "load_classifier", lambda name, device, **_: loaded)
    with pytest.raises(RuntimeError, match="scoring failed"):
        scan(archive, Settings(), as_of=AS_OF, progress=False)
    assert loaded.closed == 1
