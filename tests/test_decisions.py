"""Decisions and the flag states they give, against hand-computed dates (the first run is as of 2026-03-01 12:00 UTC).

The scenario of most tests, with min_ratio 0.5, min_messages 4, handled_margin 0.25 and handled_days 3:

- Run 1 as of 03-01 12:00 flags ann (4 of 4 negative), bob (4 of 4), cat (2 of 4: 0.5) and dee (4 of 4); eve (1 of
  4) is scored but not flagged. Decisions at 03-01: bob false-positive 12:30 then snooze until 03-03 (00:00 UTC)
  13:00; ann contacted 13:00; cat no-action 13:00 then false-positive 13:30 (share 0.5 at the decision); dee
  escalated 13:00.
- Run 2 as of 03-02 12:00, cat +1 negative (3 of 5 = 0.6 < 0.5 + 0.25): ann, cat handled, bob snoozed, dee escalated.
- Run 3 as of 03-03 00:00, the snooze's end, cat +3 negative (6 of 8 = 0.75, reaching 0.5 + 0.25): bob and cat
  returning; ann still handled (1 day 11 hours after the decision).
- Run 4 as of 03-04 12:59:59: ann handled (2 days 23:59:59 after). Run 5 as of 03-04 13:00, exactly 3 days after:
  ann returning.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from conftest import AS_OF, KeywordClassifier, write_archive
from screener import aggregate, decisions, queries, states
from screener.cli import main
from screener.errors import ConfigError, InputError, ReviewError
from screener.renderers import html_page
from screener.runs import open_run
from screener.scan import scan
from screener.settings import Settings, load_settings
from screener.store import SCHEMA_VERSION, Store

BAD, GOOD = "bad day", "fine day"
SETTINGS = Settings(min_ratio=0.5, min_messages=4, handled_margin=0.25, handled_days=3)
V1_FIXTURE = Path(__file__).parent / "fixtures" / "v1_results.duckdb"


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def msgs(user, negative, positive, before=AS_OF, tag=""):
    """``negative`` then ``positive`` messages of ``user``, one an hour going back from an hour before ``before``."""
    texts = [BAD] * negative + [GOOD] * positive
    return [(f"{user}{tag}-{i}", user, before - timedelta(hours=i + 1), text) for i, text in enumerate(texts)]


def append(db: Path, rows: list[tuple]) -> None:
    con = duckdb.connect(str(db))
    con.executemany("INSERT INTO messages VALUES (?, ?, ?, ?)", rows)
    con.close()


def run_scan(db: Path, as_of: datetime, settings: Settings = SETTINGS, rescore: bool = False) -> int:
    return scan(db, settings, as_of=as_of, classifier=KeywordClassifier(), rescore=rescore, progress=False).run_id


def states_of(db: Path, run_id: int | None = None) -> dict[str, str]:
    with open_run(db, run_id) as run:
        return {f["user_id"]: f["state"] for f in aggregate.flags_json(run.store, run.run_id)}


def decision_rows(db: Path) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT user_id, action, reviewer, decided_at, run_id, flag_share, snooze_until, note "
                           "FROM screener_decisions ORDER BY id").fetchall()
    finally:
        con.close()


@pytest.fixture
def scanned(tmp_path) -> Path:
    """Run 1 of the scenario, without decisions."""
    rows = msgs("ann", 4, 0) + msgs("bob", 4, 0) + msgs("cat", 2, 2) + msgs("dee", 4, 0) + msgs("eve", 1, 3)
    db = write_archive(tmp_path / "a.duckdb", rows)
    assert run_scan(db, AS_OF) == 1
    return db


def decide_run_1(db: Path) -> None:
    decisions.record(db, "bob", "false-positive", reviewer="sam", at=utc(2026, 3, 1, 12, 30))
    decisions.record(db, "bob", "snooze", reviewer="sam", until=decisions.parse_until("2026-03-03"),
                     at=utc(2026, 3, 1, 13))
    decisions.record(db, "ann", "contacted", reviewer="sam", note="called", at=utc(2026, 3, 1, 13))
    decisions.record(db, "cat", "no-action", reviewer="kim", at=utc(2026, 3, 1, 13))
    decisions.record(db, "cat", "false-positive", reviewer="kim", at=utc(2026, 3, 1, 13, 30))
    decisions.record(db, "dee", "escalated", reviewer="kim", at=utc(2026, 3, 1, 13))


# --- recording --------------------------------------------------------------------------------------------------

def test_a_decision_answers_the_users_latest_completed_flag_and_keeps_its_share(scanned):
    recorded = decisions.record(scanned, "cat", "contacted", reviewer="sam", note="left a message",
                                at=utc(2026, 3, 1, 13))
    assert recorded == {"id": 1, "decided_at": "2026-03-01T13:00:00+00:00", "user_id": "cat", "action": "contacted",
                        "reviewer": "sam", "snooze_until": None, "run_id": 1, "note": "left a message"}
    # eve was never flagged but has scored messages: a known user, whose decision answers no flag.
    decisions.record(scanned, "eve", "no-action", reviewer="sam", at=utc(2026, 3, 1, 14))
    assert decision_rows(scanned) == [
        ("cat", "contacted", "sam", utc(2026, 3, 1, 13), 1, 0.5, None, "left a message"),
        ("eve", "no-action", "sam", utc(2026, 3, 1, 14), None, None, None, None),
    ]


@pytest.mark.parametrize("user_id, action, kwargs, message", [
    ("nobody", "contacted", {}, "no user 'nobody'"),
    ("ann", "called", {}, "unknown action 'called'"),
    ("ann", "snooze", {}, "a snooze needs --until"),
    ("ann", "snooze", {"until": utc(2026, 3, 1, 13)}, "is not after the decision's time"),
    ("ann", "snooze", {"until": utc(2026, 3, 1, 12, 59)}, "is not after the decision's time"),
    ("ann", "contacted", {"until": utc(2026, 3, 5)}, "--until only applies to snooze"),
    ("ann", "contacted", {"note": "x" * 2001}, "at most 2000"),
    ("ann", "contacted", {"reviewer": " "}, "reviewer name"),
    ("", "contacted", {}, "user id is empty"),
])
def test_a_wrong_decision_is_refused_and_writes_nothing(scanned, user_id, action, kwargs, message):
    kwargs = {"reviewer": "sam", **kwargs}
    with pytest.raises(ReviewError, match=re.escape(message)) as error:
        decisions.record(scanned, user_id, action, at=utc(2026, 3, 1, 13), **kwargs)
    assert error.value.exit_code == 2
    assert decision_rows(scanned) == []


def test_a_snooze_until_a_date_means_midnight_utc_and_must_lie_after_now_by_default(scanned):
    assert decisions.parse_until("2026-03-03") == utc(2026, 3, 3)
    assert decisions.parse_until("2026-03-03T08:00:00+02:00") == utc(2026, 3, 3, 6)
    with pytest.raises(ReviewError, match="expects a date"):
        decisions.parse_until("next tuesday")
    with pytest.raises(ReviewError, match="is not after"):
        decisions.record(scanned, "ann", "snooze", reviewer="sam", until=utc(2020, 1, 1))  # at: now
    assert decision_rows(scanned) == []


def test_review_of_a_missing_file_or_a_database_without_results_writes_nothing(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        decisions.record(tmp_path / "none.duckdb", "ann", "contacted", reviewer="sam")
    assert not (tmp_path / "none.duckdb").exists()
    archive = write_archive(tmp_path / "m.duckdb", msgs("ann", 4, 0))
    with pytest.raises(InputError, match="no screener results"):
        decisions.record(archive, "ann", "contacted", reviewer="sam")
    con = duckdb.connect(str(archive), read_only=True)
    assert [r[0] for r in con.execute("SHOW TABLES").fetchall()] == ["messages"]
    con.close()


def test_the_reviewer_defaults_to_the_login_name_or_unknown(monkeypatch, scanned):
    monkeypatch.setattr("getpass.getuser", lambda: "alice")
    assert decisions.record(scanned, "ann", "contacted", at=utc(2026, 3, 1, 13))["reviewer"] == "alice"

    def no_login():
        raise OSError("no login name")

    monkeypatch.setattr("getpass.getuser", no_login)
    assert decisions.default_reviewer() == "unknown"


def test_a_version_1_database_is_upgraded_by_a_review_and_keeps_its_flag(tmp_path):
    db = tmp_path / "v1.duckdb"
    shutil.copyfile(V1_FIXTURE, db)
    decisions.record(db, "user-023", "contacted", reviewer="sam", at=utc(2026, 3, 2))
    with Store(db, Settings(), read_only=True) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.con.execute("SELECT run_id, user_id FROM screener_flags").fetchall() == [(1, "user-023")]
        assert store.con.execute("SELECT run_id, flag_share FROM screener_decisions").fetchall() == [(1, 1.0)]


# --- states -----------------------------------------------------------------------------------------------------

def test_states_follow_the_latest_decision_with_hand_computed_dates(scanned):
    assert states_of(scanned) == {"ann": "new", "bob": "new", "cat": "new", "dee": "new"}
    decide_run_1(scanned)
    # Decisions recorded after the scan show at once in its run.
    assert states_of(scanned, 1) == {"ann": "handled", "bob": "snoozed", "cat": "handled", "dee": "escalated"}

    append(scanned, msgs("cat", 1, 0, before=utc(2026, 3, 2, 11), tag="r2"))
    run_scan(scanned, utc(2026, 3, 2, 12))
    assert states_of(scanned) == {"ann": "handled", "bob": "snoozed", "cat": "handled", "dee": "escalated"}

    append(scanned, msgs("cat", 3, 0, before=utc(2026, 3, 2, 21), tag="r3"))
    run_scan(scanned, utc(2026, 3, 3))
    with open_run(scanned) as run:
        cat = [f for f in aggregate.flags_json(run.store, run.run_id) if f["user_id"] == "cat"][0]
    assert (cat["n_messages"], cat["n_negative"]) == (8, 6)
    assert states_of(scanned) == {"ann": "handled", "bob": "returning", "cat": "returning", "dee": "escalated"}

    run_scan(scanned, utc(2026, 3, 4, 12, 59, 59))
    assert states_of(scanned)["ann"] == "handled"
    run_scan(scanned, utc(2026, 3, 4, 13))
    assert states_of(scanned) == {"ann": "returning", "bob": "returning", "cat": "returning", "dee": "escalated"}


def test_just_below_the_margin_stays_handled_and_a_later_decision_replaces_an_earlier_one(scanned):
    decisions.record(scanned, "cat", "contacted", reviewer="sam", at=utc(2026, 3, 1, 13))
    append(scanned, msgs("cat", 2, 0, before=utc(2026, 3, 2, 11), tag="r2"))
    run_scan(scanned, utc(2026, 3, 2, 12))  # 4 of 6 = 0.667 < 0.75
    assert states_of(scanned)["cat"] == "handled"
    decisions.record(scanned, "cat", "escalated", reviewer="kim", at=utc(2026, 3, 2, 13))
    assert states_of(scanned)["cat"] == "escalated"
    decisions.record(scanned, "cat", "no-action", reviewer="kim", at=utc(2026, 3, 2, 14))
    assert states_of(scanned)["cat"] == "handled"


def test_default_rules_are_a_margin_of_15_points_and_14_days(tmp_path):
    assert (Settings().handled_margin, Settings().handled_days) == (0.15, 14)
    defaults = Settings(min_ratio=0.5, min_messages=4)
    db = write_archive(tmp_path / "a.duckdb", msgs("cat", 3, 2))  # 3 of 5 = 0.6
    run_scan(db, AS_OF, defaults)
    decisions.record(db, "cat", "contacted", reviewer="sam", at=utc(2026, 3, 1, 13))
    append(db, msgs("cat", 1, 0, before=utc(2026, 3, 2, 11), tag="r2"))
    run_scan(db, utc(2026, 3, 2, 12), defaults)   # 4 of 6 = 0.667 < 0.6 + 0.15
    assert states_of(db)["cat"] == "handled"
    append(db, msgs("cat", 1, 0, before=utc(2026, 3, 2, 23), tag="r3"))
    run_scan(db, utc(2026, 3, 3), defaults)       # 5 of 7 = 0.714 < 0.75
    assert states_of(db)["cat"] == "handled"
    append(db, msgs("cat", 1, 0, before=utc(2026, 3, 3, 23), tag="r4"))
    run_scan(db, utc(2026, 3, 4), defaults)       # 6 of 8 = 0.75: risen by the margin
    assert states_of(db)["cat"] == "returning"

    db2 = write_archive(tmp_path / "b.duckdb", msgs("cat", 3, 2))
    run_scan(db2, AS_OF, defaults)
    decisions.record(db2, "cat", "no-action", reviewer="sam", at=utc(2026, 3, 1, 13))
    append(db2, msgs("cat", 3, 2, before=utc(2026, 3, 15, 12), tag="r2"))  # 3 of 5 again in the window
    run_scan(db2, utc(2026, 3, 15, 12, 59, 59), defaults)  # 13 days 23:59:59 after the decision
    assert states_of(db2)["cat"] == "handled"
    run_scan(db2, utc(2026, 3, 15, 13), defaults)          # 14 days after
    assert states_of(db2)["cat"] == "returning"


def test_a_decision_on_a_user_never_flagged_then_keeps_them_handled_only_for_the_days(scanned):
    decisions.record(scanned, "eve", "no-action", reviewer="sam", at=utc(2026, 3, 1, 13))
    append(scanned, msgs("eve", 8, 0, before=utc(2026, 3, 2, 11), tag="r2"))
    run_scan(scanned, utc(2026, 3, 2, 12))  # 9 of 12: flagged now, and no share to compare with
    assert states_of(scanned)["eve"] == "handled"
    run_scan(scanned, utc(2026, 3, 4, 13))
    assert states_of(scanned)["eve"] == "returning"


def test_false_positive_rate_counts_the_latest_decision_of_each_decided_flag(scanned):
    decide_run_1(scanned)
    for as_of in (utc(2026, 3, 2, 12), utc(2026, 3, 3), utc(2026, 3, 4, 12, 59, 59), utc(2026, 3, 4, 13)):
        run_scan(scanned, as_of)
    decisions.record(scanned, "ann", "false-positive", reviewer="sam", at=utc(2026, 3, 4, 14))
    # Decided flags: run 1's ann (contacted), bob (snooze after false-positive), cat (false-positive after
    # no-action), dee (escalated), and run 5's ann (false-positive): 2 of 5.
    with open_run(scanned) as run:
        data = aggregate.report_data(run.store, run.run_id)
    assert data["run"]["false_positive"] == {"decided": 5, "false_positive": 2, "rate": 0.4}
    summary = scan(scanned, SETTINGS, as_of=utc(2026, 3, 5), classifier=KeywordClassifier(), progress=False)
    assert summary.as_dict()["false_positive"] == {"decided": 5, "false_positive": 2, "rate": 0.4}
    with Store(scanned, Settings(), read_only=True) as store:
        assert states.false_positive_rate(store, "no-such-model") == {"decided": 0, "false_positive": 0,
                                                                       "rate": None}


def test_decisions_survive_later_scans_and_a_rescore(scanned):
    decide_run_1(scanned)
    before = decision_rows(scanned)
    run_scan(scanned, utc(2026, 3, 2, 12), rescore=True)
    run_scan(scanned, utc(2026, 3, 2, 13))
    assert decision_rows(scanned) == before
    assert states_of(scanned) == {"ann": "handled", "bob": "snoozed", "cat": "handled", "dee": "escalated"}


def test_the_report_groups_users_by_state_and_shows_their_history(scanned):
    decide_run_1(scanned)
    run_scan(scanned, utc(2026, 3, 2, 12))
    with open_run(scanned) as run:
        data = aggregate.report_data(run.store, run.run_id)
        page = aggregate.report_data(run.store, run.run_id, page=2, page_size=2)
    assert data["groups"] == [{"state": "escalated", "count": 1, "collapsed": False},
                              {"state": "handled", "count": 2, "collapsed": True},
                              {"state": "snoozed", "count": 1, "collapsed": True}]
    bob = [u for u in data["flagged"] if u["user_id"] == "bob"][0]
    assert [(d["action"], d["decided_at"], d["snooze_until"]) for d in bob["decisions"]] == [
        ("snooze", "2026-03-01T13:00:00+00:00", "2026-03-03T00:00:00+00:00"),
        ("false-positive", "2026-03-01T12:30:00+00:00", None)]
    # Pages follow the report's order: dee (escalated), then the handled ones by rank, then bob (snoozed).
    order = ["dee"] + [u["user_id"] for u in data["flagged"] if u["state"] == "handled"] + ["bob"]
    assert page["page"] == {"number": 2, "size": 2, "pages": 2, "total": 4}
    assert sorted(u["user_id"] for u in page["flagged"]) == sorted(order[2:])
    assert page["groups"] == data["groups"]

    html = html_page.render(data, False).decode()
    assert html.index('id="group-escalated"') < html.index('<details class="group" id="group-handled">') < \
        html.index('<details class="group" id="group-snoozed">')
    assert "called" in html and "sam" in html


def test_every_statement_on_screener_decisions_only_reads_or_appends():
    # Erasure (screener purge) is the one exception the issue allows: statements in a purge folder or named so.
    for name in queries.names():
        text = queries.load(name)
        if "screener_decisions" not in text or "purge" in name or "erase" in name:
            continue
        body = "\n".join(line for line in text.splitlines() if not line.startswith("--")).upper()
        assert not re.search(r"\b(UPDATE|DELETE|TRUNCATE|DROP)\b", body), name
    code = "\n".join(p.read_text() for p in (Path(__file__).parents[1] / "screener").rglob("*.py"))
    assert not re.search(r"(UPDATE|DELETE FROM)\s+screener_decisions", code, re.IGNORECASE)


def test_review_settings_have_ranges(tmp_path):
    for content, fragment in [("handled_margin = 1.5\n", "handled_margin must be between 0 and 1"),
                              ("handled_days = 0\n", "handled_days must be between 1 and 3650"),
                              ("serve_page_size = 0\n", "serve_page_size must be between 1 and 1000")]:
        path = tmp_path / "s.toml"
        path.write_text(content)
        with pytest.raises(ConfigError, match=fragment):
            load_settings(path)


# --- the CLI ----------------------------------------------------------------------------------------------------

def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_review_then_decisions_newest_first_as_table_json_and_csv(scanned):
    first = cli("review", scanned, "ann", "--action", "contacted", "--note", "=called\tback\nlater", "--by", "sam",
                "--as-of", "2026-03-01T13:00:00Z")
    assert first.exit_code == 0, first.output
    assert first.output == "decision 1: contacted on 'ann' by sam at 2026-03-01T13:00:00+00:00\n"
    second = cli("review", scanned, "bob", "--action", "snooze", "--until", "2026-03-03", "--by", "kim",
                 "--as-of", "2026-03-01T14:00:00Z", "--json")
    assert json.loads(second.output) == {"id": 2, "decided_at": "2026-03-01T14:00:00+00:00", "user_id": "bob",
                                         "action": "snooze", "reviewer": "kim",
                                         "snooze_until": "2026-03-03T00:00:00+00:00", "run_id": 1, "note": None}

    table = cli("decisions", scanned)
    assert table.output.splitlines() == [
        "id\tdecided_at\tuser_id\taction\treviewer\tsnooze_until\trun_id\tnote",
        "2\t2026-03-01T14:00:00+00:00\tbob\tsnooze\tkim\t2026-03-03T00:00:00+00:00\t1\t-",
        "1\t2026-03-01T13:00:00+00:00\tann\tcontacted\tsam\t-\t1\t=called\\tback\\nlater",
    ]
    as_json = json.loads(cli("decisions", scanned, "--user", "ann", "--json").output)
    assert [(d["id"], d["note"]) for d in as_json] == [(1, "=called\tback\nlater")]
    rows = list(csv.DictReader(io.StringIO(cli("decisions", scanned, "--csv").output)))
    assert [r["id"] for r in rows] == ["2", "1"] and rows[1]["note"] == "'=called\tback\nlater"
    assert rows[0]["snooze_until"] == "2026-03-03T00:00:00+00:00" and rows[1]["snooze_until"] == ""

    flags = json.loads(cli("flags", scanned, "--json").output)
    assert {f["user_id"]: f["state"] for f in flags} == {"ann": "handled", "bob": "snoozed", "cat": "new",
                                                         "dee": "new"}
    assert cli("flags", scanned).output.splitlines()[0].endswith("\tescalating\tstate")


@pytest.mark.parametrize("args, message", [
    (["nobody", "--action", "contacted"], "no user 'nobody'"),
    (["ann", "--action", "called"], "'called' is not one of"),
    (["ann", "--action", "snooze"], "a snooze needs --until"),
    (["ann", "--action", "snooze", "--until", "2026-03-01"], "is not after the decision's time"),
    (["ann", "--action", "escalated", "--until", "2026-03-09"], "--until only applies to snooze"),
    (["ann", "--action", "snooze", "--until", "soon"], "expects a date"),
])
def test_cli_review_errors_exit_2_and_write_nothing(scanned, args, message):
    result = cli("review", scanned, *args, "--as-of", "2026-03-01T13:00:00Z")
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert decision_rows(scanned) == []


def test_cli_decisions_refuses_json_and_csv_together(scanned):
    result = cli("decisions", scanned, "--json", "--csv")
    assert result.exit_code == 2 and "not both" in result.output
