"""The bad-input catalogue: each case is either handled as documented or refused with a clear error."""

from datetime import datetime, timedelta, timezone

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import AS_OF, KeywordClassifier, write_archive
from screener.classifiers.registry import load_classifier
from screener.errors import InputError
from screener.scan import scan
from screener.settings import Settings


def run(db, classifier=None, **kw):
    return scan(db, kw.pop("settings", Settings()), as_of=AS_OF, classifier=classifier or KeywordClassifier(),
                progress=False, **kw)


def scores(db):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return dict(con.execute("SELECT message_id, p_negative FROM screener_scores").fetchall())
    finally:
        con.close()


def test_one_megabyte_message_is_scored_by_a_real_model_with_head_and_tail_kept(tmp_path, tiny_model):
    huge = "bad " + "x" * 1_000_000 + " good"
    when = AS_OF - timedelta(hours=1)
    db = write_archive(tmp_path / "a.duckdb", [("huge", "u", when, huge), ("small", "u", when, "hello")])
    result = run(db, classifier=load_classifier(str(tiny_model), device="cpu"))
    assert result.messages_scored == 2
    assert 0.0 <= scores(db)["huge"] <= 1.0


@pytest.mark.parametrize("text", [
    "bad \x00\x07\x1b[31m control characters",
    "bad\u200b\u200c\u200d zero width",
    "\u202ebad right-to-left override\u202c",
    "bad 😡🔥 emoji",
    "плохо bad 非常糟糕 سيء",
])
def test_unusual_unicode_is_scored_like_any_text(tmp_path, text):
    db = write_archive(tmp_path / "a.duckdb", [("m", "u", AS_OF - timedelta(hours=1), text)])
    assert run(db).messages_scored == 1
    assert scores(db)["m"] == pytest.approx(0.9)


def test_parquet_files_mixing_naive_and_zoned_timestamps_are_read_as_utc(tmp_path):
    naive = pa.table({"message_id": ["n"], "user_id": ["u"], "text": ["bad"],
                      "sent_at": pa.array([datetime(2026, 2, 22, 12, 0, 1)], pa.timestamp("us"))})
    zoned = pa.table({"message_id": ["z"], "user_id": ["u"], "text": ["bad"],
                      "sent_at": pa.array([datetime(2026, 2, 22, 17, 0, 0, tzinfo=timezone(timedelta(hours=5)))],
                                          pa.timestamp("us", tz="+05:00"))})
    pq.write_table(naive, tmp_path / "a.parquet")
    pq.write_table(zoned, tmp_path / "b.parquet")
    result = run(tmp_path / "r.duckdb", source=str(tmp_path / "*.parquet"),
                 settings=Settings(min_messages=1, min_ratio=0.0))
    assert result.messages_scored == 2
    con = duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True)
    n_messages = con.execute("SELECT n_messages FROM screener_flags").fetchone()[0]
    con.close()
    # The naive time is 1 s inside the 7-day window; the zoned one is exactly on its edge (12:00 UTC): outside.
    assert n_messages == 1


def test_iso_text_timestamps_are_parsed_and_unparseable_ones_are_named(tmp_path):
    db = tmp_path / "a.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE messages (message_id VARCHAR, user_id VARCHAR, sent_at VARCHAR, text VARCHAR)")
    con.execute("INSERT INTO messages VALUES ('a', 'u', '2026-02-28T10:00:00+02:00', 'bad')")
    con.close()
    assert run(db).messages_scored == 1
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO messages VALUES ('b', 'u', 'yesterday-ish', 'bad')")
    con.close()
    with pytest.raises(InputError, match="yesterday-ish"):
        run(db)


def test_binary_text_column_is_refused_naming_the_column_and_type(tmp_path):
    table = pa.table({"message_id": ["a"], "user_id": ["u"],
                      "sent_at": pa.array([AS_OF], pa.timestamp("us", tz="UTC")),
                      "text": pa.array([b"\xff\xfe invalid utf-8"], pa.binary())})
    pq.write_table(table, tmp_path / "a.parquet")
    with pytest.raises(InputError, match="column 'text' \\(text\\) has type BLOB"):
        run(tmp_path / "r.duckdb", source=str(tmp_path / "a.parquet"))
