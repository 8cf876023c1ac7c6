"""Issue 15, item 2: DuckDB's errors are classified by type (and by asking the OS about locks), never by words in
their messages: a corrupt file or a tiny memory_limit is not "a scan is already running"."""

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from conftest import generated_rows, write_archive
from screener import dbfile
from screener.errors import AlreadyRunningError, ConfigError, InputError, StorageError
from screener.settings import Settings
from screener.store import Store


def screener(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "screener.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def big_archive(path: Path, rows: int = 100_000) -> Path:
    """An archive of many blocks, so that damage to one block in the middle is found only when it is read."""
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE messages AS SELECT 'm' || range AS message_id, 'u' || (range % 100) AS user_id, "
                "TIMESTAMPTZ '2026-02-20 00:00:00+00' + to_seconds(range) AS sent_at, "
                "md5(range::VARCHAR) || repeat(' bad', 40) AS text FROM range($rows)", {"rows": rows})
    con.close()
    return path


class Holder:
    """Another process holding the database open for writing, as a running scan does."""

    def __init__(self, db: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
             "print('held', flush=True); time.sleep(60)", str(db)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "held"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def test_corrupt_database_is_not_exit_4(tmp_path, tiny_model):
    db = big_archive(tmp_path / "m.duckdb")
    data = bytearray(db.read_bytes())
    middle = dbfile.HEADER_BYTES + 6 * 262144 + 1000  # inside a data block: the file opens, the scan reads it
    data[middle:middle + 64] = b"\xab" * 64
    db.write_bytes(bytes(data))
    result = screener("scan", db, "--model", tiny_model, "--no-progress")
    assert result.returncode == 3, result.stderr
    assert "damaged" in result.stderr and "Corrupt database file" in result.stderr
    assert "already running" not in result.stderr and "Traceback" not in result.stderr


def test_corrupt_database_header_is_exit_3(tmp_path):
    db = write_archive(tmp_path / "m.duckdb", generated_rows(n_users=1, per_user=2))
    data = bytearray(db.read_bytes())
    data[4096 + 10:4096 + 74] = b"\xab" * 64
    db.write_bytes(bytes(data))
    result = screener("flags", db)
    assert result.returncode == 3, result.stderr
    assert "not a readable DuckDB database" in result.stderr


def test_tiny_memory_limit_is_not_exit_4(tmp_path):
    db = write_archive(tmp_path / "m.duckdb", generated_rows(n_users=1, per_user=2))
    (tmp_path / "screener.toml").write_text('memory_limit = "1KB"\n')
    result = screener("scan", db, cwd=tmp_path)
    # Below its range the setting is refused before DuckDB starts; an out-of-memory error DuckDB raises at a
    # limit in range is classified as exit 2 too (test_errors_on_an_open_database_are_classified_by_type).
    assert result.returncode == 2, result.stderr
    assert "memory_limit must be between" in result.stderr
    assert "already running" not in result.stderr


def test_truncated_duckdb_file_exits_3(tmp_path, tiny_model):
    db = big_archive(tmp_path / "m.duckdb")
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    before = db.read_bytes()
    result = screener("scan", db, "--model", tiny_model, "--no-progress")
    assert result.returncode == 3, result.stderr
    assert "is truncated" in result.stderr and "Traceback" not in result.stderr
    assert db.read_bytes() == before


def test_a_file_whose_free_tail_a_checkpoint_cut_off_is_not_truncated(tmp_path):
    db = tmp_path / "m.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE keep AS SELECT range AS i FROM range(10)")
    con.execute("CREATE TABLE gone AS SELECT range AS i, md5(range::VARCHAR) AS t FROM range(200000)")
    con.close()
    for statement in ("DROP TABLE gone", "INSERT INTO keep VALUES (10)"):
        con = duckdb.connect(str(db))
        con.execute(statement)
        con.close()
    con = duckdb.connect(str(db), read_only=True)
    (block_size, total), = con.execute("SELECT block_size, total_blocks FROM pragma_database_size()").fetchall()
    con.close()
    assert db.stat().st_size < dbfile.HEADER_BYTES + block_size * total
    with Store(db, Settings(), read_only=True) as store:
        assert store.con.execute("SELECT count(*) FROM keep").fetchone() == (11,)


def test_a_lock_held_by_another_process_is_exit_4_for_readers_too(tmp_path):
    db = write_archive(tmp_path / "m.duckdb", generated_rows(n_users=1, per_user=2))
    with Holder(db):
        result = screener("flags", db)
        assert result.returncode == 4, result.stderr
        assert "open for writing by another process" in result.stderr
        with pytest.raises(AlreadyRunningError):
            Store(db, Settings())


def test_a_message_that_mentions_a_lock_is_not_a_lock_conflict(tmp_path):
    db = write_archive(tmp_path / "m.duckdb", generated_rows(n_users=1, per_user=2))
    words = duckdb.IOException("Could not set lock on file: Conflicting lock is held (corrupt block)")
    assert isinstance(dbfile.open_error(words, db, True, False, "256MB"), InputError)
    with Holder(db):
        assert isinstance(dbfile.open_error(duckdb.IOException("any words"), db, True, False, "256MB"),
                          AlreadyRunningError)
        assert isinstance(dbfile.open_error(duckdb.IOException("any words"), db, True, True, "256MB"),
                          AlreadyRunningError)


@pytest.mark.parametrize("exc, expected", [
    (duckdb.OutOfMemoryException("failed to pin block"), ConfigError),
    (duckdb.ConversionException("Could not convert string 'x' to TIMESTAMP"), InputError),
    (duckdb.InvalidInputException("Invalid string encoding found in Parquet file"), InputError),
    (duckdb.Error("Corrupt database file: computed checksum does not match in block"), InputError),
    (duckdb.SerializationException("could not deserialize"), InputError),
    (duckdb.IOException("Could not write file: No space left on device (lock)"), StorageError),
    (duckdb.TransactionException("Failed to commit: Cannot open file m.duckdb.wal: Permission denied"), StorageError),
    (duckdb.CatalogException("Table with name lock does not exist"), type(None)),
])
def test_errors_on_an_open_database_are_classified_by_type(tmp_path, exc, expected):
    error = dbfile.classify(exc, tmp_path / "m.duckdb", "the scan failed", memory_limit="256MB")
    assert type(error) is expected or isinstance(error, expected)
    assert not isinstance(error, AlreadyRunningError)
