"""`screener purge`: erasure of one user on request (complete, one transaction, one tombstone without personal
data, found through the catalogue), retention with hand-computed dates, and compaction of the file."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from conftest import AS_OF, KeywordClassifier, write_archive
from screener import purge
from screener.cli import main
from screener.errors import ConfigError, InputError, StorageError
from screener.scan import scan
from screener.settings import Settings
from screener.store import SCHEMA_VERSION

ERASED = "erase-me-7f3a"
ERASED_IDS = [f"em-{i}-9c1d" for i in range(7)]
ERASED_TEXTS = [f"bad thing number {i} from the erased person" for i in range(6)] + ["   "]
SOURCE_TABLE = "messages"


def erased_rows() -> list[tuple]:
    """Six negative messages and one blank of the user to erase; six negative of keep-1, six positive of keep-2.
    Every message lies two to three days before AS_OF, inside the 7-day window of both runs (AS_OF - 1 day and
    AS_OF)."""
    start = AS_OF - timedelta(days=2)
    rows = [(mid, ERASED, start - timedelta(hours=i), text) for i, (mid, text) in
            enumerate(zip(ERASED_IDS, ERASED_TEXTS))]
    rows += [(f"k1-{i}", "keep-1", start - timedelta(hours=i), "bad news") for i in range(6)]
    rows += [(f"k2-{i}", "keep-2", start - timedelta(hours=i), "all good") for i in range(6)]
    return rows


def two_runs(db: Path, source: str | None = None) -> None:
    for as_of in (AS_OF - timedelta(days=1), AS_OF):
        scan(db, Settings(), source=source, as_of=as_of, classifier=KeywordClassifier(), progress=False)


def sql(db: Path, statement: str, params=None, write: bool = False) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=not write)
    try:
        return con.execute(statement, params or []).fetchall()
    finally:
        con.close()


def plant_traces(db: Path) -> None:
    """What a later release or a failed run can leave: a table of notes on users (as the decisions table keeps),
    and run errors that name a message id or quote a message."""
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE screener_future_notes (user_id VARCHAR NOT NULL, note VARCHAR)")
    con.executemany("INSERT INTO screener_future_notes VALUES (?, ?)", [
        (ERASED, "called, will call back on Monday"),
        ("keep-1", f"same household as {ERASED}"),
        ("keep-2", "nothing to do"),
    ])
    for run_id, error in ((3, f"ConversionException: message {ERASED_IDS[2]} has no valid time"),
                          (4, f"InputError: offending value '{ERASED_TEXTS[3]}'")):
        con.execute("""
            INSERT INTO screener_runs (run_id, started_at, status, source, model_name, model_id, as_of, config, error)
            SELECT $run_id, started_at, 'failed', source, model_name, model_id, as_of, config, $error
            FROM screener_runs WHERE run_id = 2""", {"run_id": run_id, "error": error})
    con.close()


def traces(db: Path, terms: list[str]) -> list[tuple[str, str, str]]:
    """(table, column, term) for every cell of every table but the source that contains one of the terms."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        found = []
        tables = [t for (t,) in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database() "
            "AND table_type = 'BASE TABLE'").fetchall() if t != SOURCE_TABLE]
        for table in tables:
            for (column,) in con.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_catalog = current_database() "
                    "AND table_name = ?", [table]).fetchall():
                for term in terms:
                    hits = con.execute(f'SELECT count(*) FROM "{table}" WHERE contains(CAST("{column}" AS VARCHAR), ?)',
                                       [term]).fetchone()[0]
                    if hits:
                        found.append((table, column, term))
        return found
    finally:
        con.close()


TERMS = [ERASED, *ERASED_IDS, *ERASED_TEXTS[:6]]


@pytest.fixture
def erasable(tmp_path) -> Path:
    db = write_archive(tmp_path / "m.duckdb", erased_rows())
    two_runs(db)
    plant_traces(db)
    return db


def test_erasure_leaves_no_trace_of_the_user_in_any_table_and_one_tombstone(erasable, caplog):
    review = CliRunner().invoke(main, ["review", str(erasable), ERASED, "--action", "contacted", "--note",
                                       f"called {ERASED}, doing better", "--by", "amy"])
    assert review.exit_code == 0, review.output
    before = traces(erasable, TERMS)
    assert {table for table, _, _ in before} == {"screener_flags", "screener_scores", "screener_skipped",
                                                 "screener_future_notes", "screener_runs", "screener_decisions"}
    result = CliRunner().invoke(main, ["purge", str(erasable), "--user", ERASED, "--request-id", "DSR-2026-0117",
                                       "--json"])
    assert result.exit_code == 0, result.output
    assert traces(erasable, TERMS) == []
    tombstone = json.loads(result.stdout)
    # Flags of runs 1 and 2; 6 scores and 1 skip record; the decision on the user; one note row of the user; keep-1's note and the errors of
    # runs 3 and 4 blanked.
    assert tombstone["removed"] == {"screener_flags": 2, "screener_scores": 6, "screener_skipped": 1,
                                    "screener_decisions": 1, "screener_future_notes": 1, "screener_future_notes.note": 1,
                                    "screener_runs.error": 2}
    assert tombstone["source_messages_left"] == 7 and tombstone["kind"] == "user"
    assert sql(erasable, "SELECT kind, request_id, cutoff IS NULL, source_messages_left FROM screener_erasures") == [
        ("user", "DSR-2026-0117", True, 7)]
    # Everyone else keeps everything; the source keeps the user's messages.
    assert sql(erasable, "SELECT user_id, count(*) FROM screener_flags GROUP BY ALL") == [("keep-1", 2)]
    assert sql(erasable, "SELECT count(*) FROM screener_scores") == [(12,)]
    assert sql(erasable, "SELECT user_id, note FROM screener_future_notes ORDER BY user_id") == [
        ("keep-1", purge.ERASED_MARKER), ("keep-2", "nothing to do")]
    assert sql(erasable, "SELECT run_id, error FROM screener_runs WHERE error IS NOT NULL ORDER BY run_id") == [
        (3, purge.ERASED_MARKER), (4, purge.ERASED_MARKER)]
    assert sql(erasable, f"SELECT count(*) FROM {SOURCE_TABLE} WHERE user_id = ?", [ERASED]) == [(7,)]
    assert "still holds 7 messages" in caplog.text and ERASED not in caplog.text + result.output


def test_the_same_request_twice_changes_nothing_and_a_rescan_scores_the_archive_again(erasable):
    runner = CliRunner()
    first = runner.invoke(main, ["purge", str(erasable), "--user", ERASED, "--request-id", "T-1"])
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("erased for request T-1 (tombstone 1)")
    # The archive still holds the messages: the next scan scores them again, as the README says.
    rescan = scan(erasable, Settings(), as_of=AS_OF, classifier=KeywordClassifier(), progress=False)
    assert rescan.messages_scored == 6
    again = runner.invoke(main, ["purge", str(erasable), "--user", ERASED, "--request-id", "T-1"])
    assert again.exit_code == 0, again.output
    assert "was carried out at" in again.stdout and "nothing changed" in again.stdout
    assert sql(erasable, "SELECT count(*) FROM screener_erasures") == [(1,)]
    assert sql(erasable, "SELECT count(*) FROM screener_flags WHERE user_id = ?", [ERASED]) == [(1,)]
    new = runner.invoke(main, ["purge", str(erasable), "--user", ERASED, "--request-id", "T-2", "--json"])
    assert json.loads(new.stdout)["removed"]["screener_flags"] == 1
    assert traces(erasable, TERMS) == []


def test_a_failure_in_the_middle_rolls_everything_back(erasable):
    # Tables are purged in name order: the flags, scores and skip records go first, then deleting the parent row
    # that a later table's foreign key still references fails.
    con = duckdb.connect(str(erasable))
    con.execute("CREATE TABLE screener_x_parent (user_id VARCHAR PRIMARY KEY)")
    con.execute("CREATE TABLE screener_y_child (user_id VARCHAR REFERENCES screener_x_parent (user_id))")
    con.execute("INSERT INTO screener_x_parent VALUES (?)", [ERASED])
    con.execute("INSERT INTO screener_y_child VALUES (?)", [ERASED])
    con.close()
    before = traces(erasable, TERMS)
    result = CliRunner().invoke(main, ["purge", str(erasable), "--user", ERASED, "--request-id", "T-1"])
    assert result.exit_code == StorageError.exit_code, result.output
    assert "nothing was removed" in result.output and "foreign key" in result.output
    assert traces(erasable, TERMS) == before
    assert sql(erasable, "SELECT count(*) FROM screener_erasures") == [(0,)]


def test_an_archive_that_cannot_be_read_stops_the_erasure_before_it_changes_anything(tmp_path):
    parquet = write_parquet(tmp_path / "archive" / "part-0.parquet", erased_rows())
    db = tmp_path / "results.duckdb"
    two_runs(db, source=str(parquet))
    before = traces(db, TERMS)
    parquet.rename(tmp_path / "moved.parquet")
    result = CliRunner().invoke(main, ["purge", str(db), "--user", ERASED, "--request-id", "T-1"])
    assert result.exit_code == InputError.exit_code, result.output
    assert "no Parquet files match" in result.output and "nothing was changed" in result.output
    assert traces(db, TERMS) == before


@pytest.mark.parametrize("request_id", ["jane@example.com", "has space", "", "-starts-with-dash", "x" * 129])
def test_a_request_id_that_could_carry_personal_data_is_refused(erasable, request_id):
    with purge.open_results(erasable) as store:
        with pytest.raises(ConfigError, match="opaque ticket id"):
            purge.erase_user(store, ERASED, request_id)
    assert sql(erasable, "SELECT count(*) FROM screener_flags WHERE user_id = ?", [ERASED]) == [(2,)]


def test_an_unknown_user_is_recorded_with_zero_counts_and_a_warning(erasable, caplog):
    result = CliRunner().invoke(main, ["purge", str(erasable), "--user", "nobody", "--request-id", "T-9", "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["removed"].values()) == {0}
    assert "held nothing about this user id" in caplog.text


@pytest.mark.parametrize("args", [[], ["--user", "u"], ["--older-than", "40", "--user", "u", "--request-id", "r"],
                                  ["--older-than", "40", "--request-id", "r"], ["--user", "u", "--request-id", "r",
                                                                                 "--as-of", "2026-03-01"],
                                  ["--older-than", "0"]])
def test_usage_errors_exit_2_and_change_nothing(erasable, args):
    result = CliRunner().invoke(main, ["purge", str(erasable), *args])
    assert result.exit_code == 2, result.output
    assert sql(erasable, "SELECT count(*) FROM screener_erasures") == [(0,)]


def test_a_missing_file_or_one_without_results_exits_3_and_creates_nothing(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(main, ["purge", str(tmp_path / "nope.duckdb"), "--older-than", "40"])
    assert missing.exit_code == 3 and not (tmp_path / "nope.duckdb").exists()
    plain = write_archive(tmp_path / "plain.duckdb", [])
    result = runner.invoke(main, ["purge", str(plain), "--older-than", "40"])
    assert result.exit_code == 3 and "no screener results" in result.output
    assert sql(plain, "SELECT table_name FROM information_schema.tables") == [("messages",)]


def write_parquet(path: Path, rows: list[tuple]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "message_id": [r[0] for r in rows], "user_id": [r[1] for r in rows],
        "sent_at": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")), "text": [r[3] for r in rows]}), path)
    return path


def shape(db: Path) -> list[tuple]:
    return sql(db, "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
                   "WHERE table_catalog = current_database() ORDER BY ALL")


def test_compact_removes_the_erased_bytes_from_the_file_and_keeps_everything_else(tmp_path):
    parquet = write_parquet(tmp_path / "archive.parquet", erased_rows())
    db = tmp_path / "results.duckdb"
    two_runs(db, source=str(parquet))
    os.chmod(db, 0o640)
    assert ERASED.encode() in db.read_bytes()
    before = shape(db)
    result = CliRunner().invoke(main, ["purge", str(db), "--user", ERASED, "--request-id", "T-1", "--compact"])
    assert result.exit_code == 0, result.output
    data = db.read_bytes()
    assert ERASED.encode() not in data and not any(mid.encode() in data for mid in ERASED_IDS)
    assert shape(db) == before and oct(db.stat().st_mode & 0o777) == "0o640"
    assert sql(db, "SELECT count(*) FROM screener_scores") == [(12,)]
    assert sql(db, "SELECT value FROM screener_meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.parquet", "results.duckdb"]
    assert sql(db, "SELECT DISTINCT user_id FROM screener_flags") == [("keep-1",)]


# --- retention ------------------------------------------------------------------------------------------------

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
RUN1_AS_OF = datetime(2026, 1, 10, tzinfo=timezone.utc)
# --older-than 40 as of NOW: the cutoff is 2026-01-20 12:00 UTC.
CUTOFF = datetime(2026, 1, 20, 12, 0, tzinfo=timezone.utc)


def retention_rows() -> list[tuple]:
    """User r: five negative messages in the week before run 1 (2026-01-10), five in the week before run 2 (NOW),
    one either side of the cutoff, and two blank ones (skipped), one old, one recent."""
    t = lambda *a: datetime(*a, tzinfo=timezone.utc)  # noqa: E731
    rows = [(f"old-{d}", "r", t(2026, 1, d, 9), "bad start") for d in range(4, 9)]
    rows += [("before-cutoff", "r", CUTOFF - timedelta(seconds=1), "bad edge"),
             ("at-cutoff", "r", CUTOFF, "bad edge"),
             ("blank-old", "r", t(2026, 1, 2), " "),
             ("blank-new", "r", t(2026, 2, 27), "")]
    rows += [(f"new-{d}", "r", t(2026, 2, d, 9), "bad end") for d in range(23, 28)]
    return rows


@pytest.fixture
def retained(tmp_path) -> Path:
    db = write_archive(tmp_path / "m.duckdb", retention_rows())
    for as_of in (RUN1_AS_OF, NOW):
        scan(db, Settings(), as_of=as_of, classifier=KeywordClassifier(), progress=False)
    return db


def test_retention_removes_exactly_what_is_about_times_before_the_cutoff(retained):
    assert sql(retained, "SELECT run_id, count(*) FROM screener_flags GROUP BY ALL ORDER BY ALL") == [(1, 1), (2, 1)]
    result = CliRunner().invoke(main, ["purge", str(retained), "--older-than", "40", "--as-of", NOW.isoformat(),
                                       "--json"])
    assert result.exit_code == 0, result.output
    tombstone = json.loads(result.stdout)
    assert tombstone["cutoff"] == CUTOFF.isoformat() and tombstone["kind"] == "retention"
    # Run 1 (as of 2026-01-10) and its flag; the scores of old-4..old-8 and before-cutoff; blank-old's skip record.
    assert tombstone["removed"] == {"screener_flags": 1, "screener_runs": 1, "screener_scores": 6,
                                    "screener_skipped": 1}
    assert sql(retained, "SELECT run_id FROM screener_runs") == [(2,)]
    assert sql(retained, "SELECT message_id FROM screener_scores ORDER BY ALL") == [
        ("at-cutoff",), *[(f"new-{d}",) for d in range(23, 28)]]
    assert sql(retained, "SELECT message_id FROM screener_skipped") == [("blank-new",)]
    assert sql(retained, "SELECT value FROM screener_meta WHERE key = 'retention_horizon'") == [(CUTOFF.isoformat(),)]
    assert sql(retained, "SELECT count(*) FROM messages") == [(len(retention_rows()),)]


def test_after_retention_scans_leave_messages_before_the_horizon_unscored(retained):
    with purge.open_results(retained) as store:
        purge.apply_retention(store, 40, NOW)
    con = duckdb.connect(str(retained))
    con.executemany("INSERT INTO messages VALUES (?, ?, ?, ?)", [
        ("late-old", "r", CUTOFF - timedelta(days=1), "bad late"), ("late-new", "r", NOW - timedelta(hours=1), "ok")])
    con.close()
    result = scan(retained, Settings(), as_of=NOW, classifier=KeywordClassifier(), progress=False)
    assert result.messages_scored == 1
    assert sql(retained, "SELECT count(*) FROM screener_scores WHERE message_id LIKE 'old-%' "
                         "OR message_id IN ('before-cutoff', 'late-old')") == [(0,)]
    # An earlier cutoff never moves the horizon back.
    with purge.open_results(retained) as store:
        earlier = purge.apply_retention(store, 40, NOW - timedelta(days=30))
    assert earlier.removed == {"screener_flags": 0, "screener_runs": 0, "screener_scores": 0, "screener_skipped": 0}
    assert sql(retained, "SELECT value FROM screener_meta WHERE key = 'retention_horizon'") == [(CUTOFF.isoformat(),)]


def test_retention_removes_the_scores_of_messages_the_archive_no_longer_holds(retained):
    sql(retained, "DELETE FROM messages WHERE message_id = 'new-25'", write=True)
    with purge.open_results(retained) as store:
        tombstone = purge.apply_retention(store, 40, NOW)
    assert tombstone.removed["screener_scores"] == 7
    assert sql(retained, "SELECT count(*) FROM screener_scores WHERE message_id = 'new-25'") == [(0,)]


def test_a_retention_period_shorter_than_the_windows_is_refused(retained):
    # Default settings read 37 days back: the 7-day window and the 30-day baseline before it.
    result = CliRunner().invoke(main, ["purge", str(retained), "--older-than", "36", "--as-of", NOW.isoformat()])
    assert result.exit_code == 2 and "keep at least 37 days" in result.output
    assert sql(retained, "SELECT count(*) FROM screener_runs") == [(2,)]
    with purge.open_results(retained) as store:
        assert purge.apply_retention(store, 37, NOW).cutoff == NOW - timedelta(days=37)


def test_tombstones_survive_retention_and_hold_no_user_id(erasable):
    runner = CliRunner()
    assert runner.invoke(main, ["purge", str(erasable), "--user", ERASED, "--request-id", "T-1"]).exit_code == 0
    far = (AS_OF + timedelta(days=400)).isoformat()
    assert runner.invoke(main, ["purge", str(erasable), "--older-than", "40", "--as-of", far]).exit_code == 0
    rows = sql(erasable, "SELECT kind, request_id FROM screener_erasures ORDER BY erasure_id")
    assert rows == [("user", "T-1"), ("retention", None)]
    # Retention covers the results; tables of another kind (here the notes, as the decisions table) keep their
    # rows until a person's erasure.
    assert traces(erasable, ["keep-1", "keep-2", ERASED]) == [("screener_future_notes", "user_id", "keep-1"),
                                                             ("screener_future_notes", "user_id", "keep-2")]
    assert [sql(erasable, f"SELECT count(*) FROM {t}")[0][0] for t in (
        "screener_runs", "screener_flags", "screener_scores", "screener_skipped")] == [0, 0, 0, 0]


def test_an_older_results_database_is_upgraded_by_purge(tmp_path):
    v1 = tmp_path / "v1.duckdb"
    shutil.copyfile(Path(__file__).parent / "fixtures" / "v1_results.duckdb", v1)
    result = CliRunner().invoke(main, ["purge", str(v1), "--user", "user-023", "--request-id", "T-1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["removed"]["screener_flags"] == 1
    assert sql(v1, "SELECT value FROM screener_meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    assert sql(v1, "SELECT count(*) FROM screener_flags") == [(0,)]
