"""Issue 15, item 8 (the user's archive is written to): with `--db`, a DuckDB archive is attached read-only and
never written, whatever the scan, report and flags commands do; a same-file scan keeps working as before."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import duckdb
import pytest
from click.testing import CliRunner

from conftest import AS_OF, KeywordClassifier, generated_rows, score_counts, write_archive
from screener.cli import main
from screener.errors import InputError
from screener.scan import scan
from screener.settings import Settings

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "screener.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=300)


def fingerprint(folder, name):
    """The archive's bytes and mtime, and every file beside it that shares its name (a .wal DuckDB would add)."""
    path = folder / name
    return (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns,
            sorted(p.name for p in folder.iterdir() if p.name.startswith(name)))


def test_the_archive_is_written_to_never_with_db_its_bytes_and_mtime_stay(tmp_path, tiny_model, tiny_threshold):
    archive = write_archive(tmp_path / "archive.duckdb", generated_rows())
    results = tmp_path / "results.duckdb"
    before = fingerprint(tmp_path, "archive.duckdb")
    args = ["--model", tiny_model, "--as-of", AS_OF.isoformat(), "--no-progress", "--threshold", tiny_threshold]
    first = cli("scan", archive, "--db", results, *args, "--json", "--report", tmp_path / "r.html", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["messages_scored"] == 120 and 0 < summary["users_flagged"] < 12
    assert cli("scan", archive, "--db", results, *args, "--json", cwd=tmp_path).returncode == 0
    flags = cli("flags", results, "--json", cwd=tmp_path)
    assert flags.returncode == 0 and len(json.loads(flags.stdout)) == summary["users_flagged"]
    assert cli("report", results, "-o", tmp_path / "again.html", cwd=tmp_path).returncode == 0
    assert "this is bad news" in (tmp_path / "again.html").read_text()  # evidence read from the archive again
    assert fingerprint(tmp_path, "archive.duckdb") == before
    con = duckdb.connect(str(archive), read_only=True)
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    con.close()
    assert tables == {"messages"}
    assert score_counts(results) == (120, 120)
    con = duckdb.connect(str(results), read_only=True)
    source, kind = con.execute("SELECT source, source_kind FROM screener_runs WHERE run_id = 1").fetchone()
    con.close()
    assert (source, kind) == (str(archive.resolve()), "duckdb")


def test_the_archive_is_written_to_only_by_a_same_file_scan_and_db_naming_the_archive_is_one(tmp_path,
                                                                                             monkeypatch):
    archive = write_archive(tmp_path / "archive.duckdb", generated_rows(n_users=2, per_user=3))
    (tmp_path / "link.duckdb").symlink_to(archive)
    monkeypatch.chdir(tmp_path)
    result = scan(archive.resolve(), Settings(), source="link.duckdb", as_of=AS_OF,
                  classifier=KeywordClassifier(), progress=False)
    assert result.messages_scored == 6
    assert score_counts(archive) == (6, 6)


def test_the_archive_is_written_to_never_flags_and_table_errors_name_the_archive(tmp_path):
    archive = write_archive(tmp_path / "archive.duckdb", generated_rows(n_users=2, per_user=3))
    with pytest.raises(InputError, match=r"archive.duckdb: no table 'msgs'.*found tables: \['messages'\]"):
        scan(tmp_path / "r.duckdb", Settings(table="msgs"), source=str(archive), as_of=AS_OF,
             classifier=KeywordClassifier(), progress=False)
    bogus = tmp_path / "bogus.duckdb"
    bogus.write_bytes(b"not a database" * 100)
    with pytest.raises(InputError, match="cannot open the archive .*bogus.duckdb read-only"):
        scan(tmp_path / "r2.duckdb", Settings(), source=str(bogus), as_of=AS_OF, classifier=KeywordClassifier(),
             progress=False)
    assert bogus.read_bytes() == b"not a database" * 100


def test_the_archive_is_written_to_never_schema_qualified_table_in_the_archive(tmp_path, monkeypatch):
    archive = tmp_path / "archive.duckdb"
    con = duckdb.connect(str(archive))
    con.execute("CREATE SCHEMA sales")
    con.execute("CREATE TABLE sales.chat (message_id VARCHAR, user_id VARCHAR, sent_at TIMESTAMPTZ, text VARCHAR)")
    con.executemany("INSERT INTO sales.chat VALUES (?, ?, ?, ?)", generated_rows(n_users=3, per_user=4))
    con.execute("CREATE TABLE chat (x INTEGER)")  # the same name in main: sales.chat must be asked for by name
    con.close()
    before = archive.read_bytes()
    monkeypatch.setattr("screener.classifiers.registry.load_classifier",
                        lambda name, device="auto", **_: KeywordClassifier())
    result = CliRunner().invoke(main, ["-q", "scan", str(archive), "--db", str(tmp_path / "r.duckdb"), "--table",
                                       "sales.chat", "--as-of", AS_OF.isoformat(), "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["messages_scored"] == 12
    assert archive.read_bytes() == before
