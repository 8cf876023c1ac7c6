"""The real CLI, end to end, in subprocesses: output, files, errors and exit codes."""

import json
import os
import signal
import subprocess
import sys
from datetime import timedelta

import duckdb
from click.testing import CliRunner

from conftest import AS_OF, generated_rows, score_counts, write_archive
from screener.cli import main

AS_OF_ARG = AS_OF.isoformat()


def screener(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "screener.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_every_command_help_has_an_example():
    runner = CliRunner()
    for command in main.commands:
        result = runner.invoke(main, [command, "--help"])
        assert result.exit_code == 0, command
        assert "Example" in result.output, f"`screener {command} --help` has no example"


def test_version_and_short_help_flag():
    runner = CliRunner()
    assert runner.invoke(main, ["--version"]).output.startswith("screener, version ")
    assert "Exit codes" in runner.invoke(main, ["-h"]).output


def test_scan_flags_report_end_to_end_with_tiny_model(tmp_path, tiny_model, tiny_threshold):
    db = write_archive(tmp_path / "m.duckdb", generated_rows())
    first = screener("scan", db, "--model", tiny_model, "--as-of", AS_OF_ARG, "--json", "--no-progress",
                     "--threshold", tiny_threshold)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["messages_scored"] == 120 and summary["users"] == 12
    assert {"model_id", "seconds", "users_flagged"} <= set(summary)

    flags = screener("flags", db, "--json")
    assert flags.returncode == 0, flags.stderr
    rows = json.loads(flags.stdout)
    assert len(rows) == summary["users_flagged"] and 0 < len(rows) < 12
    for row in rows:
        assert {"user_id", "n_messages", "n_negative", "ratio", "wilson_lower"} <= set(row)
        assert row["n_messages"] >= 5 and row["ratio"] >= 0.25 and row["wilson_lower"] >= 0.15

    report = tmp_path / "r.html"
    out = screener("report", db, "-o", report)
    assert out.returncode == 0, out.stderr
    assert report.read_text().lstrip().lower().startswith("<!doctype html")
    assert oct(report.stat().st_mode & 0o777) == "0o600"
    csv_out = screener("report", db, "--format", "csv", "-o", "-")
    assert csv_out.returncode == 0 and csv_out.stdout.splitlines()[0].startswith("rank,user_id")

    second = screener("scan", db, "--model", tiny_model, "--as-of", AS_OF_ARG, "--json", "--no-progress")
    assert json.loads(second.stdout)["messages_scored"] == 0

    con = duckdb.connect(str(db))
    con.executemany("INSERT INTO messages VALUES (?, ?, ?, ?)",
                    [(f"late{i}", "u03", AS_OF - timedelta(minutes=i + 1), "hello") for i in range(4)])
    con.close()
    third = screener("scan", db, "--model", tiny_model, "--as-of", AS_OF_ARG, "--json", "--no-progress")
    assert json.loads(third.stdout)["messages_scored"] == 4
    con = duckdb.connect(str(db), read_only=True)
    late_runs = con.execute("SELECT DISTINCT run_id FROM screener_scores WHERE message_id LIKE 'late%'").fetchall()
    counts = con.execute("SELECT count(*), count(DISTINCT message_id) FROM screener_scores").fetchone()
    con.close()
    assert late_runs == [(3,)] and counts == (124, 124)


def test_missing_archive_exits_1_with_message(tmp_path):
    result = screener("scan", tmp_path / "nope.duckdb")
    assert result.returncode == 1 and "does not exist" in result.stderr


def test_parquet_archive_without_db_is_a_usage_error(tmp_path):
    result = screener("scan", tmp_path / "a.parquet")
    assert result.returncode == 2 and "--db" in result.stderr


def test_wrong_table_exits_3(tmp_path, tiny_model):
    db = write_archive(tmp_path / "m.duckdb", generated_rows(n_users=1, per_user=1))
    result = screener("scan", db, "--model", tiny_model, "--table", "msgs")
    assert result.returncode == 3 and "no table 'msgs'" in result.stderr


def test_unknown_model_exits_5(tmp_path):
    db = write_archive(tmp_path / "m.duckdb", generated_rows(n_users=1, per_user=1))
    result = screener("scan", db, "--model", "no-such-model")
    assert result.returncode == 5 and "unknown model 'no-such-model'" in result.stderr


def test_bad_config_exits_2(tmp_path):
    db = write_archive(tmp_path / "m.duckdb", generated_rows(n_users=1, per_user=1))
    (tmp_path / "screener.toml").write_text("min_ratio = 2.0\n")
    result = screener("scan", db, cwd=tmp_path)
    assert result.returncode == 2 and "min_ratio must be between 0 and 1" in result.stderr


def test_report_before_any_scan_exits_3(tmp_path):
    db = write_archive(tmp_path / "m.duckdb", generated_rows(n_users=1, per_user=1))
    result = screener("flags", db)
    assert result.returncode == 3 and "no screener results" in result.stderr


def test_second_scan_while_one_holds_the_database_exits_4_and_changes_nothing(tmp_path, tiny_model):
    db = write_archive(tmp_path / "m.duckdb", generated_rows(n_users=2, per_user=3))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True);"
         " time.sleep(60)", str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = screener("scan", db, "--model", tiny_model)
        assert result.returncode == 4, result.stderr
        assert "open for writing by another process" in result.stderr
    finally:
        holder.kill()
        holder.wait()
    con = duckdb.connect(str(db), read_only=True)
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    con.close()
    assert tables == {"messages"}


def test_not_a_duckdb_file_exits_3_and_is_left_untouched(tmp_path):
    bogus = tmp_path / "m.duckdb"
    bogus.write_bytes(b"this is not a database" * 100)
    before = bogus.read_bytes()
    result = screener("scan", bogus)
    assert result.returncode == 3 and "not a readable DuckDB database" in result.stderr
    assert bogus.read_bytes() == before


def test_sigkill_mid_scan_then_rerun_gives_exactly_one_score_each_and_same_flags(tmp_path, tiny_model,
                                                                                 tiny_threshold):
    rows = generated_rows(n_users=40, per_user=100, seed=3)
    total = len(rows)
    (tmp_path / "screener.toml").write_text(
        f"window_rows = 32\nbatch_size = 16\nnegative_threshold = {tiny_threshold}\n")
    killed_db = write_archive(tmp_path / "killed.duckdb", rows)
    clean_db = write_archive(tmp_path / "clean.duckdb", rows)
    args = ["--model", tiny_model, "--as-of", AS_OF_ARG, "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "screener.cli", "-vv", "scan", killed_db, *args], cwd=tmp_path,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    committed = 0
    for line in proc.stderr:
        committed += "committed a window" in line
        if committed == 20:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial, distinct = score_counts(killed_db)
    assert 0 < partial < total, "the kill should land mid-scan"
    assert partial == distinct

    resumed = screener("scan", killed_db, *args, "--json", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["messages_scored"] == total - partial
    assert score_counts(killed_db) == (total, total)

    assert screener("scan", clean_db, *args, cwd=tmp_path).returncode == 0
    flags_killed = json.loads(screener("flags", killed_db, "--json").stdout)
    flags_clean = json.loads(screener("flags", clean_db, "--json").stdout)
    assert flags_killed == flags_clean and 0 < len(flags_clean) < 40
    con = duckdb.connect(str(killed_db), read_only=True)
    statuses = [r[0] for r in con.execute("SELECT status FROM screener_runs ORDER BY run_id").fetchall()]
    con.close()
    assert statuses == ["interrupted", "completed"]
