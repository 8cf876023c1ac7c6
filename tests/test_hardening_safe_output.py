"""Issue 15, item 1: no command writes its output over the archive, the results database or a non-regular file, and
output files land atomically."""

import os
import shutil
import stat
import subprocess
import sys

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from conftest import AS_OF, KeywordClassifier, generated_rows, write_archive
from screener import output, report
from screener.cli import main
from screener.errors import ConfigError, StorageError
from screener.scan import scan
from screener.settings import Settings


def screener(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "screener.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    db = write_archive(tmp_path_factory.mktemp("scanned") / "m.duckdb", generated_rows())
    scan(db, Settings(), as_of=AS_OF, classifier=KeywordClassifier(), progress=False)
    return db


@pytest.fixture
def db(scanned, tmp_path):
    copy = tmp_path / "m.duckdb"
    shutil.copy(scanned, copy)
    return copy


def still_a_database(db) -> bool:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM screener_runs").fetchone()[0] == 1
    finally:
        con.close()


def test_report_refuses_to_overwrite_the_archive(db):
    before = db.read_bytes()
    result = screener("report", db, "-o", db)
    assert result.returncode == 2, result.stderr
    assert "refusing to write" in result.stderr and "Traceback" not in result.stderr
    assert db.read_bytes() == before and still_a_database(db)


def test_scan_refuses_a_report_path_that_is_the_archive_before_scanning(tmp_path):
    archive = write_archive(tmp_path / "m.duckdb", generated_rows(n_users=2, per_user=3))
    before = archive.read_bytes()
    result = screener("scan", archive, "--report", archive, "--model", "no-such-model")
    assert result.returncode == 2, result.stderr
    assert "refusing to write" in result.stderr
    # Refused before the scan opened anything: not even the schema was created.
    assert archive.read_bytes() == before


def test_report_refuses_the_database_through_a_symlink_a_hard_link_and_another_spelling(db):
    (db.parent / "link.duckdb").symlink_to(db)
    os.link(db, db.parent / "hard.duckdb")
    (db.parent / "sub").mkdir()
    runner = CliRunner()
    for target in ("link.duckdb", "hard.duckdb", "sub/../m.duckdb", "./m.duckdb"):
        result = runner.invoke(main, ["report", str(db), "-o", str(db.parent / target)])
        assert result.exit_code == 2, (target, result.output)
        assert "refusing to write" in result.output
    assert (db.parent / "link.duckdb").is_symlink() and still_a_database(db)


def test_report_refuses_the_write_ahead_log_and_any_other_data_file(db, tmp_path):
    other = write_archive(tmp_path / "other.duckdb", [])
    pq.write_table(pa.table({"a": [1]}), tmp_path / "data.parquet")
    before = {p: p.read_bytes() for p in (other, tmp_path / "data.parquet")}
    runner = CliRunner()
    for target in (str(db) + ".wal", other, tmp_path / "data.parquet"):
        result = runner.invoke(main, ["report", str(db), "-o", str(target)])
        assert result.exit_code == 2, (target, result.output)
    assert not os.path.exists(str(db) + ".wal")
    assert {p: p.read_bytes() for p in before} == before


def test_report_refuses_fifos_device_nodes_and_folders(db, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "folder").mkdir()
    (tmp_path / "null-link").symlink_to("/dev/null")
    runner = CliRunner()
    for target, kind in ((fifo, "FIFO"), ("/dev/null", "character device"),
                         (tmp_path / "null-link", "character device"), (tmp_path / "folder", "folder")):
        result = runner.invoke(main, ["report", str(db), "-o", str(target)])
        assert result.exit_code == 2, (target, result.output)
        assert kind in result.output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert (tmp_path / "null-link").is_symlink()


def test_scan_refuses_to_report_over_a_parquet_file_of_its_archive(tmp_path):
    (tmp_path / "a").mkdir()
    rows = pa.table({"message_id": ["m1"], "user_id": ["u"], "sent_at": pa.array([AS_OF], pa.timestamp("us", tz="UTC")),
                     "text": ["bad"]})
    pq.write_table(rows, tmp_path / "a" / "part-1.parquet")
    before = (tmp_path / "a" / "part-1.parquet").read_bytes()
    result = CliRunner().invoke(main, ["scan", str(tmp_path / "a" / "*.parquet"), "--db", str(tmp_path / "r.duckdb"),
                                       "--report", str(tmp_path / "a" / "part-1.parquet")])
    assert result.exit_code == 2, result.output
    assert (tmp_path / "a" / "part-1.parquet").read_bytes() == before
    assert not (tmp_path / "r.duckdb").exists()


def test_report_writes_through_a_symlink_to_a_regular_file_and_keeps_the_link(db, tmp_path):
    real = tmp_path / "published" / "report.html"
    real.parent.mkdir()
    real.write_text("yesterday")
    link = tmp_path / "report.html"
    link.symlink_to(real)
    result = CliRunner().invoke(main, ["report", str(db), "-o", str(link)])
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text().lstrip().lower().startswith("<!doctype html")
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert sorted(p.name for p in real.parent.iterdir()) == ["report.html"]


def test_report_dash_is_stdout_and_writes_no_file(db, tmp_path):
    result = screener("report", db, "--format", "json", "-o", "-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.lstrip().startswith("{")
    assert not (tmp_path / "-").exists()


def test_write_file_replaces_atomically_and_leaves_nothing_behind_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.html"
    target.write_text("old")
    assert output.write_file(target, b"new") == target
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o600

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError, match="No space left on device"):
        output.write_file(target, b"newer")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.html"]


def test_data_files_cover_the_database_its_log_and_every_file_a_glob_matches(tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"x")
    (tmp_path / "b.parquet").write_bytes(b"x")
    found = output.data_files(tmp_path / "r.duckdb", str(tmp_path / "*.parquet"), "s3://bucket/x.parquet", None)
    assert set(found) >= {tmp_path / "r.duckdb", tmp_path / "r.duckdb.wal", tmp_path / "a.parquet",
                          tmp_path / "b.parquet"}
    assert not any("s3:" in str(p) for p in found)


def test_write_report_refuses_what_it_is_told_to_protect(tmp_path):
    protected = tmp_path / "archive.csv"
    protected.write_text("id,text\n")
    with pytest.raises(ConfigError, match="refusing to write"):
        report.write_report({}, protected, protected=[protected])
    assert protected.read_text() == "id,text\n"


def test_compare_refuses_to_overwrite_its_data_before_evaluating(tmp_path):
    pytest.importorskip("training.compare")
    from training.compare import compare

    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\ngood\t1\n")
    with pytest.raises(ConfigError, match="refusing to write"):
        compare(["no-such-model"], str(data), str(data), str(tmp_path / "c.html"))
    assert data.read_text() == "sentence\tlabel\ngood\t1\n"
