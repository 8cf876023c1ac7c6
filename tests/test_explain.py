"""`screener explain`: the receipt of one user in one run, hand-computed (as_of = 2026-03-01 12:00 UTC, default
settings), and its check against the stored flag."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from conftest import AS_OF, KeywordClassifier, write_archive
from screener import explain
from screener.cli import main
from screener.errors import ConfigError
from screener.runs import open_run
from screener.scan import scan
from screener.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
BAD, GOOD = "bad day", "fine day"


def rows() -> list[tuple]:
    """six_of_eight: 6 negative and 2 positive messages in the last 7 days (one an hour back from an hour before
    as_of), 2 positive ones 8 and 9 days back (baseline and long window), 1 negative one 40 days back (outside every
    window, but among the last 20 messages). four_of_four: 4 negative messages, too few to flag."""
    out = [(f"six_of_eight-{i}", "six_of_eight", AS_OF - timedelta(hours=i + 1), BAD if i < 6 else GOOD)
           for i in range(8)]
    out += [("base-8", "six_of_eight", AS_OF - timedelta(days=8), GOOD),
            ("base-9", "six_of_eight", AS_OF - timedelta(days=9), GOOD),
            ("ancient", "six_of_eight", AS_OF - timedelta(days=40), BAD)]
    out += [(f"four-{i}", "four_of_four", AS_OF - timedelta(hours=i + 1), BAD) for i in range(4)]
    return out


@pytest.fixture
def db(tmp_path) -> Path:
    path = write_archive(tmp_path / "m.duckdb", rows())
    scan(path, Settings(), as_of=AS_OF, classifier=KeywordClassifier(), progress=False)
    return path


def receipt(db: Path, user: str, run_id: int | None = None) -> dict:
    with open_run(db, run_id) as run:
        return explain.explain(run.store, run.run_id, user)


REASON = ("6 of 8 messages in the last 7 days negative (75%, lower bound 41%), threshold 25%, lower bound at least "
          "12.5%, with at least 5 messages")
# Wilson lower bound of 6 of 8 at z = 1.96: (0.75 + 0.2401 - 1.96 * sqrt(0.0234375 + 0.0150063)) / 1.4802.
WILSON_6_OF_8 = 0.40927


def test_a_flagged_user_gets_rule_reason_model_settings_windows_messages_and_a_match(db):
    r = receipt(db, "six_of_eight")
    assert r["stored"]["flagged"] and r["stored"]["rank"] == 1
    assert (r["stored"]["rule"], r["stored"]["reason"]) == ("high_negative_share", REASON)
    assert r["stored"]["wilson_lower"] == pytest.approx(WILSON_6_OF_8, abs=1e-5)
    assert r["run"]["model_id"] == KeywordClassifier().model_id and r["run"]["as_of"] == AS_OF.isoformat()
    assert (r["settings"]["min_ratio"], r["settings"]["min_lower_bound"]) == (0.25, 0.125)
    assert r["settings"]["short_window_days"] == 7
    w = r["windows"]
    assert (w["short"]["start"], w["short"]["end"]) == ("2026-02-22T12:00:00+00:00", "2026-03-01T12:00:00+00:00")
    assert (w["short"]["n"], w["short"]["negative"], w["short"]["ratio"]) == (8, 6, 0.75)
    assert (w["long"]["start"], w["long"]["n"], w["long"]["negative"]) == ("2026-01-30T12:00:00+00:00", 10, 6)
    assert (w["baseline"]["start"], w["baseline"]["end"]) == ("2026-01-23T12:00:00+00:00",
                                                              "2026-02-22T12:00:00+00:00")
    assert (w["baseline"]["n"], w["baseline"]["ratio"]) == (2, None)  # fewer than 5: no baseline share
    assert (w["last_n"]["n"], w["last_n"]["negative"]) == (11, 7)
    assert r["rules"] == [{"name": "high_negative_share", "matched": True, "reason": REASON, "description":
                           "At least 5 messages in the last 7 days, with a negative share of at least 0.25, and of "
                           "at least 0.125 even at the low end of its confidence interval (the Wilson lower bound)."}]
    by_id = {m["message_id"]: m for m in r["messages"]}
    assert len(by_id) == 11
    assert by_id["six_of_eight-0"]["windows"] == ["short", "long", "last_n"]
    assert by_id["six_of_eight-0"]["p_negative"] == pytest.approx(0.9) and by_id["six_of_eight-0"]["negative"]
    assert by_id["base-8"]["windows"] == ["long", "baseline", "last_n"] and by_id["base-8"]["negative"] is False
    assert by_id["ancient"]["windows"] == ["last_n"]
    assert r["matches"] and r["differences"] == []
    assert r["recomputed"]["reason"] == REASON


def test_a_user_not_flagged_is_told_which_rule_did_not_match_and_why(db):
    r = receipt(db, "four_of_four")
    assert r["stored"] == {"flagged": False} and not r["recomputed"]["flagged"]
    assert (r["windows"]["short"]["n"], r["windows"]["short"]["negative"]) == (4, 4)
    assert r["rules"][0]["matched"] is False and r["rules"][0]["reason"] is None
    assert r["matches"]
    text = explain.as_text(r)
    assert "not flagged" in text and "4 of 4 negative (100%)" in text and "not matched" in text


def test_the_sql_hashes_are_those_of_the_statement_files(db):
    hashes = {q["path"]: q["sha256"] for q in receipt(db, "six_of_eight")["sql"]}
    assert set(hashes) == {"sql/source/source_view.sql", "sql/flags/user_stats.sql", "sql/flags/rule_hits_create.sql",
                           "sql/rules/high_negative_share.sql", "sql/flags/flags_insert.sql"}
    for path, digest in hashes.items():
        assert digest == hashlib.sha256((ROOT / path).read_bytes()).hexdigest()


def tamper(db: Path, *message_ids: str) -> None:
    con = duckdb.connect(str(db))
    con.execute("UPDATE screener_scores SET p_negative = 0.1 WHERE list_contains(?, message_id)", [list(message_ids)])
    con.close()


def test_a_changed_score_shows_as_a_difference_from_the_stored_flag(db):
    tamper(db, "six_of_eight-0")
    r = receipt(db, "six_of_eight")
    assert not r["matches"]
    # One negative fewer in every window that holds the message: 5 of 8, 5 of 10 over 30 days, 6 of the last 11.
    assert {d["field"] for d in r["differences"]} == {"reason", "n_negative", "ratio", "wilson_lower", "neg_long",
                                                      "ratio_long", "neg_last", "ratio_last"}
    negatives = next(d for d in r["differences"] if d["field"] == "n_negative")
    assert (negatives["stored"], negatives["recomputed"]) == (6, 5)
    assert "DIFFERENT from the stored result" in explain.as_text(r)


def test_scores_that_no_longer_reach_the_rule_show_the_flag_itself_differs(db):
    # 2 of 8 left: a share of 25%, but a lower bound of 0.071, below 0.125.
    tamper(db, "six_of_eight-0", "six_of_eight-1", "six_of_eight-2", "six_of_eight-3")
    r = receipt(db, "six_of_eight")
    assert r["differences"] == [{"field": "flagged", "stored": True, "recomputed": False}]


def test_one_open_run_explains_several_users_and_keeps_its_archive_view(db):
    with open_run(db) as run:
        first = explain.explain(run.store, run.run_id, "four_of_four")
        second = explain.explain(run.store, run.run_id, "six_of_eight")
        total = run.store.con.execute("SELECT count(*) FROM screener_source").fetchone()[0]
    assert first == receipt(db, "four_of_four") and second["matches"]
    assert total == len(rows())


def test_an_unknown_user_is_a_usage_error(db):
    with pytest.raises(ConfigError, match="no message in the archive"):
        receipt(db, "nobody")
    result = CliRunner().invoke(main, ["explain", str(db), "nobody"])
    assert result.exit_code == 2 and "check the user id" in result.output


def test_cli_text_json_and_an_earlier_run(db):
    runner = CliRunner()
    text = runner.invoke(main, ["explain", str(db), "six_of_eight"])
    assert text.exit_code == 0, text.output
    assert f"FLAGGED, rank 1, by rule high_negative_share: {REASON}" in text.stdout
    assert "the same as the stored result" in text.stdout
    assert "six_of_eight-0\t2026-03-01T11:00:00+00:00\tP(negative) 0.9000\tnegative\tshort,long,last_n" in text.stdout
    later = AS_OF + timedelta(days=8)
    scan(db, Settings(), as_of=later, classifier=KeywordClassifier(), progress=False)
    now = json.loads(runner.invoke(main, ["explain", str(db), "six_of_eight", "--json"]).stdout)
    then = json.loads(runner.invoke(main, ["explain", str(db), "six_of_eight", "--run", "1", "--json"]).stdout)
    assert (now["run"]["id"], now["stored"]["flagged"], now["windows"]["short"]["n"]) == (2, False, 0)
    assert (then["run"]["id"], then["stored"]["reason"], then["matches"]) == (1, REASON, True)
