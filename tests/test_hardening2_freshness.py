"""Issue 15, item 11 (silent staleness): source freshness in the way of dbt's `source freshness`. The run record keeps
the archive's newest message time and the messages new since the previous run; past freshness_warn_hours the
report opens with a banner and stderr gets a line, past freshness_error_hours the scan exits 8; a window without
messages says so. Every time below is computed by hand from AS_OF = 2026-03-01T12:00Z."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta

import duckdb

from conftest import AS_OF, KeywordClassifier, write_archive
from screener import aggregate, report, runs
from screener.errors import StaleSourceError
from screener.scan import scan
from screener.settings import Settings

H = timedelta(hours=1)
# The newest message is 80 hours old at AS_OF: 2026-02-26T04:00Z.
OLD_ROWS = [("m1", "u1", AS_OF - 80 * H, "bad"), ("m2", "u1", AS_OF - 90 * H, "good"),
            ("m3", "u2", AS_OF - 100 * H, "bad")]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def run(db, as_of=AS_OF, **settings):
    return scan(db, Settings(**settings), as_of=as_of, classifier=KeywordClassifier(), progress=False)


def page_text(db, run_id) -> str:
    with runs.open_run(db, run_id) as opened:
        data = aggregate.report_data(opened.store, opened.run_id)
    html = report.render(data, "html").decode("utf-8")
    body = html[html.index("<body>"):html.index("<script>")]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))


def test_silent_staleness_newest_age_against_the_limits(tmp_path):
    db = write_archive(tmp_path / "a.duckdb", OLD_ROWS)
    first = run(db)
    assert first.newest_message_at == "2026-02-26T04:00:00+00:00"
    assert first.newest_message_age_hours == 80.0
    assert (first.freshness, first.messages_new, first.messages_in_window) == ("warn", 3, 3)
    # "Older than" the limit: exactly 80 hours is still fresh.
    assert run(db, freshness_warn_hours=80).freshness == "fresh"
    assert run(db, freshness_warn_hours=79.9).freshness == "warn"
    assert run(db, freshness_error_hours=79.5).freshness == "error"
    assert run(db, freshness_warn_hours=10, freshness_error_hours=80).freshness == "warn"
    assert run(db, freshness_warn_hours=0, freshness_error_hours=0).freshness == "off"


def test_silent_staleness_new_messages_since_the_previous_run(tmp_path):
    db = write_archive(tmp_path / "a.duckdb", OLD_ROWS)
    assert run(db).messages_new == 3
    con = duckdb.connect(str(db))
    con.executemany("INSERT INTO messages VALUES (?, ?, ?, ?)",
                    [("n1", "u1", AS_OF - H, "bad"), ("n2", "u2", AS_OF - H / 2, "fine")])
    con.close()
    second = run(db)
    assert (second.messages_new, second.newest_message_at, second.freshness) == (
        2, "2026-03-01T11:30:00+00:00", "fresh")
    assert second.newest_message_age_hours == 0.5
    third = run(db)
    assert (third.messages_new, third.freshness) == (0, "fresh")
    con = duckdb.connect(str(db), read_only=True)
    recorded = con.execute("SELECT run_id, newest_message_at, messages_new, messages_in_window, freshness "
                           "FROM screener_runs ORDER BY run_id").fetchall()
    con.close()
    assert [(r[0], r[1].isoformat(), r[2], r[3], r[4]) for r in recorded] == [
        (1, "2026-02-26T04:00:00+00:00", 3, 3, "warn"),
        (2, "2026-03-01T11:30:00+00:00", 2, 5, "fresh"),
        (3, "2026-03-01T11:30:00+00:00", 0, 5, "fresh"),
    ]


def test_silent_staleness_the_report_has_a_banner_and_names_an_empty_window(tmp_path):
    db = write_archive(tmp_path / "a.duckdb", OLD_ROWS + [("n1", "u1", AS_OF - H / 2, "bad")])
    assert run(db).freshness == "fresh"
    assert "Stale data" not in page_text(db, 1)
    # A month later nothing arrived: 720.5 hours since 2026-03-01T11:30Z, nothing in the 7-day window.
    later = run(db, as_of=AS_OF + timedelta(days=30))
    assert (later.freshness, later.messages_new, later.messages_in_window, later.users_flagged) == ("warn", 0, 0, 0)
    text = page_text(db, later.run_id)
    assert ("Stale data. The archive's newest message is from 2026-03-01 11:30 UTC, 720.5 hours before the data's "
            "as-of time (limit 72 hours); 0 new messages since the previous run.") in text
    assert ("No messages at all in the 7-day window ending 2026-03-31 12:00 UTC, so nobody could be flagged. The "
            "archive's newest message is from 2026-03-01 11:30 UTC.") in text
    assert "Nobody was flagged in this run" not in text


def test_silent_staleness_an_empty_archive_is_stale_and_says_so(tmp_path):
    db = write_archive(tmp_path / "a.duckdb", [])
    result = run(db)
    assert (result.freshness, result.newest_message_at, result.messages_in_window) == ("warn", None, 0)
    text = page_text(db, result.run_id)
    assert "Stale data. The archive holds no message with a time" in text
    assert "nobody could be flagged. The archive holds no message with a time." in text
    assert run(db, freshness_error_hours=1).freshness == "error"


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "screener.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=300)


def test_silent_staleness_cli_warns_on_stderr_and_exits_8_past_the_error_limit(tmp_path, tiny_model):
    db = write_archive(tmp_path / "a.duckdb", OLD_ROWS)
    args = ["--model", tiny_model, "--as-of", AS_OF.isoformat(), "--no-progress", "--json"]
    warned = cli("scan", db, *args, cwd=tmp_path)
    assert warned.returncode == 0, warned.stderr
    [line] = [line for line in warned.stderr.splitlines() if "stale source" in line]
    assert "WARNING" in line and ("the archive's newest message is from 2026-02-26T04:00:00+00:00, 80.0 hours "
                                  "before as-of 2026-03-01T12:00:00+00:00 (freshness_warn_hours = 72)") in line

    (tmp_path / "screener.toml").write_text("freshness_error_hours = 24\n")
    failed = cli("scan", db, *args, "--report", tmp_path / "r.html", cwd=tmp_path)
    assert failed.returncode == StaleSourceError.exit_code == 8, failed.stderr
    assert "freshness_error_hours = 24" in failed.stderr and "0 new messages since the previous run" in failed.stderr
    summary = json.loads(failed.stdout)  # the summary and the report are written before the exit
    assert summary["freshness"] == "error" and summary["run_id"] == 2
    assert "Stale data, past the error limit." in (tmp_path / "r.html").read_text()
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT status, freshness FROM screener_runs WHERE run_id = 2").fetchone() == (
        "completed", "error")
    con.close()
