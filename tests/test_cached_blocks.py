"""A scan lets DuckDB drop the table blocks it caches (Store.release_cached_blocks), so its memory does not grow with
the scores it writes: the blocks are evicted, the configured memory limit comes back, and a scan that releases them
on every window loses and repeats no message."""

from __future__ import annotations

from datetime import datetime, timezone

import duckdb

from screener import store as store_module
from screener.scan import scan
from screener.settings import Settings
from screener.store import Store

from conftest import KeywordClassifier


def cached_bytes(store: Store) -> int:
    return store.run("buffer_memory").fetchone()[1]


def test_cached_table_blocks_are_evicted_and_the_memory_limit_comes_back(tmp_path):
    with Store(tmp_path / "r.duckdb", Settings(memory_limit="256MB")) as store:
        # 1,500,000 rows of 32-character strings: about 26 MB of blocks, read back after the checkpoint wrote them.
        store.con.execute("CREATE TABLE t AS SELECT range AS i, md5(range::VARCHAR) AS s FROM range(1500000)")
        store.con.execute("CHECKPOINT")
        assert store.con.execute("SELECT count(DISTINCT s) FROM t").fetchone()[0] == 1500000
        assert cached_bytes(store) >= store_module.CACHED_BLOCKS_BYTES
        assert store.release_cached_blocks()
        assert cached_bytes(store) <= store_module.RELEASE_MARGIN_BYTES
        # 256MB is 256,000,000 bytes, which DuckDB shows in MiB.
        assert store.con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == "244.1 MiB"
        assert not store.release_cached_blocks()
        assert store.con.execute("SELECT count(DISTINCT s) FROM t").fetchone()[0] == 1500000


def test_a_scan_that_releases_blocks_every_window_scores_each_message_once(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "CACHED_BLOCKS_BYTES", 0)
    released = []
    original = Store.release_cached_blocks
    monkeypatch.setattr(Store, "release_cached_blocks", lambda self: released.append(original(self)) or released[-1])
    db = tmp_path / "a.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE messages AS SELECT 'm' || range AS message_id, 'u' || (range % 7) AS user_id, "
                "TIMESTAMPTZ '2026-02-20 00:00:00+00' + to_minutes(range) AS sent_at, "
                "'message number ' || range AS text FROM range(5000)")
    con.close()
    settings = Settings(window_rows=256)
    result = scan(db, settings, classifier=KeywordClassifier(), progress=False,
                  as_of=datetime(2026, 3, 1, tzinfo=timezone.utc))
    assert result.messages_scored == 5000
    # Once after the pending messages are counted (which reads the whole archive), then after each of 20 windows.
    assert len(released) == 21 and any(released)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT message_id) FROM screener_scores").fetchone() == (5000, 5000)


def test_committed_rows_are_checkpointed_once_the_log_passes_the_store_threshold(tmp_path):
    """DuckDB holds committed rows in memory until a checkpoint; a store's connection checkpoints at
    ``CHECKPOINT_THRESHOLD`` (8 MB), half DuckDB's own 16 MB, so its write-ahead log never grows past it by more
    than one commit."""
    path = tmp_path / "w.duckdb"
    wal = tmp_path / "w.duckdb.wal"
    with Store(path, Settings()) as store:
        store.con.execute("CREATE TABLE t (s VARCHAR)")
        sizes = []
        for k in range(24):
            # About 1.3 MB of log a commit: 40,000 distinct 32-character strings.
            store.con.execute(f"INSERT INTO t SELECT md5((range + {k * 40_000})::VARCHAR) FROM range(40000)")
            sizes.append(wal.stat().st_size if wal.exists() else 0)
        assert store.con.execute("SELECT count(*) FROM t").fetchone() == (24 * 40_000,)
    assert max(sizes) < 8_000_000 + 2_000_000
    assert sizes.count(0) + sum(1 for a, b in zip(sizes, sizes[1:]) if b < a) >= 2  # it did checkpoint, twice or more
