"""Issue 15, item 6 (skip accounting): each archive row is counted once, under one reason, "not scored" apart from
"scored, not aggregated", and the run record, the summary and the report add up to the archive's rows."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import duckdb
from click.testing import CliRunner

from conftest import AS_OF, KeywordClassifier, write_archive
from screener import aggregate, report, runs
from screener.cli import main
from screener.scan import scan
from screener.settings import Settings

H = timedelta(hours=1)
# Rows with one or several problems each; the comment is the one reason the row is counted under.
ROWS = [
    ("a1", "u1", AS_OF - H, "bad day"),            # aggregated
    ("a2", "u1", AS_OF - 2 * H, "good day"),       # aggregated
    ("a3", "u1", AS_OF - 3 * H, "bad again"),      # aggregated
    ("b1", None, None, ""),                        # not scored: empty_text (also no user, no time)
    ("b2", None, None, "bad"),                     # scored, not aggregated: null_user_id (also no time)
    ("b3", "u2", None, "no time"),                 # scored, not aggregated: null_sent_at
    ("b4", None, AS_OF + H, "bad"),                # scored, not aggregated: null_user_id (also after as_of)
    ("b5", "u2", AS_OF + H, "later"),              # scored, not aggregated: after_as_of
    (None, None, AS_OF - H, ""),                   # not scored: null_message_id (also no user, blank)
    ("a1", "u1", AS_OF - H / 2, "later copy"),     # not scored: duplicate_message_id (a1's earlier copy is kept)
    ("d1", None, AS_OF - H, "   "),                # not scored: empty_text (the earliest copy of d1, kept)
    ("d1", None, AS_OF - H / 5, "copy"),           # not scored: duplicate_message_id
]
NOT_SCORED = {"null_message_id": 1, "duplicate_message_id": 2, "empty_text": 2}
NOT_AGGREGATED = {"null_user_id": 2, "null_sent_at": 1, "after_as_of": 1}


def scan_once(db):
    return scan(db, Settings(), as_of=AS_OF, classifier=KeywordClassifier(), progress=False)


def page_text(html: str) -> str:
    body = html[html.index("<body>"):html.index("<script>")]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))


def test_skip_accounting_counts_each_row_once_and_the_counts_add_up(tmp_path):
    db = write_archive(tmp_path / "a.duckdb", ROWS)
    first = scan_once(db)
    assert first.messages_total == 12
    assert first.messages_scored == 7 and first.messages_with_score == 7
    assert (first.messages_skipped, first.skipped_by_reason) == (5, NOT_SCORED)
    assert (first.messages_not_aggregated, first.not_aggregated_by_reason) == (4, NOT_AGGREGATED)
    assert first.messages_total == first.messages_with_score + first.messages_skipped
    assert first.users == 1  # u2's only rows have no time or one after as_of

    second = scan_once(db)
    assert second.messages_scored == 0
    assert (second.messages_total, second.messages_with_score, second.messages_skipped) == (12, 7, 5)
    assert second.skipped_by_reason == NOT_SCORED and second.not_aggregated_by_reason == NOT_AGGREGATED

    con = duckdb.connect(str(db), read_only=True)
    record = con.execute(
        "SELECT messages_total, messages_scored, messages_with_score, messages_skipped, skipped_by_reason, "
        "messages_not_aggregated, not_aggregated_by_reason FROM screener_runs WHERE run_id = 1").fetchone()
    con.close()
    assert record[:4] == (12, 7, 7, 5) and record[5] == 4
    assert json.loads(record[4]) == NOT_SCORED and json.loads(record[6]) == NOT_AGGREGATED


def test_skip_accounting_the_report_states_the_arithmetic(tmp_path):
    db = write_archive(tmp_path / "a.duckdb", ROWS)
    scan_once(db)
    run_id = scan_once(db).run_id
    with runs.open_run(db, run_id) as opened:
        data = aggregate.report_data(opened.store, opened.run_id)
    text = page_text(report.render(data, "html").decode("utf-8"))
    assert "7 of 12 in the archive" in text
    assert "12 = 7 scored + 5 not scored" in text
    assert "0 scored in this run" in text
    assert ("5 not scored: duplicate message id: 2 empty text: 2 null message id: 1 "
            "4 scored, not aggregated: after as of: 1 null sent at: 1 null user id: 2") in text
    document = json.loads(report.render(data, "json"))
    assert document["run"]["messages_total"] == 12
    assert document["run"]["messages_with_score"] + document["run"]["messages_skipped"] == 12
    assert document["run"]["not_aggregated_by_reason"] == NOT_AGGREGATED


def test_skip_accounting_scan_summary_json_through_the_cli(tmp_path, monkeypatch):
    db = write_archive(tmp_path / "a.duckdb", ROWS)
    monkeypatch.setattr("screener.classifiers.registry.load_classifier",
                        lambda name, device="auto", **_: KeywordClassifier())
    result = CliRunner().invoke(main, ["-q", "scan", str(db), "--as-of", AS_OF.isoformat(), "--no-progress",
                                       "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["messages_total"] == summary["messages_with_score"] + summary["messages_skipped"] == 12
    assert summary["skipped_by_reason"] == NOT_SCORED
    assert summary["not_aggregated_by_reason"] == NOT_AGGREGATED


def test_skip_accounting_a_run_recorded_before_the_accounting_keeps_its_old_summary():
    from conftest_report import sample_data

    data = sample_data()
    assert "messages_with_score" not in data["run"]
    text = page_text(report.render(data, "html").decode("utf-8"))
    assert "3 skipped:" in text and " = " not in text.split("Messages scored")[1].split("Model")[0]
