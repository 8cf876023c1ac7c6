"""Schema migrations against ``fixtures/v1_results.duckdb``: a version-1 results database written by the release
before migrations (228 messages of 3 users, run 1 scored with the default model as of 2026-03-01, one flag, for
user-023). Every test works on a copy; the fixture itself is never opened for writing."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from conftest import KeywordClassifier
from screener.cli import main
from screener.errors import SchemaError
from screener.scan import scan
from screener.settings import Settings
from screener.store import SCHEMA_VERSION, Store, migrations

FIXTURE = Path(__file__).parent / "fixtures" / "v1_results.duckdb"
AS_OF = datetime(2026, 3, 1, tzinfo=timezone.utc)
V1_TABLES = ("screener_runs", "screener_scores", "screener_skipped", "screener_flags", "messages")
V1_FLAG_REASON = "10 of 10 messages in the last 7 days negative (100%), threshold 60% with at least 5 messages"


@pytest.fixture
def v1(tmp_path) -> Path:
    copy = tmp_path / "results.duckdb"
    shutil.copyfile(FIXTURE, copy)
    return copy


def rows(db: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def version(db: Path) -> str:
    return rows(db, "SELECT value FROM screener_meta WHERE key = 'schema_version'")[0][0]


def table_rows(db: Path, table: str, columns: str = "*") -> list[tuple]:
    return rows(db, f"SELECT {columns} FROM {table} ORDER BY ALL")


def shape(db: Path) -> dict[str, list[tuple]]:
    """Column names, types and nullability of each screener table."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'screener_%'").fetchall()]
        return {t: [r[:3] for r in con.execute(f"DESCRIBE {t}").fetchall()] for t in sorted(tables)}
    finally:
        con.close()


V1_SCORE_COLUMNS = "message_id, model_id, p_negative, label, scored_at, run_id"
V1_FLAG_COLUMNS = ("run_id, user_id, rank, n_messages, n_negative, ratio, wilson_lower, n_long, neg_long, ratio_long, "
                   "n_last, neg_last, ratio_last, baseline_n, baseline_ratio, escalating")
V1_RUN_COLUMNS = ("run_id, started_at, finished_at, status, source, model_name, model_id, as_of, messages_total, "
                  "messages_scored, messages_skipped, skipped_by_reason, users_seen, users_flagged, seconds, config, "
                  "error")


def test_the_fixture_is_a_version_1_database_with_one_flag():
    assert version(FIXTURE) == "1"
    assert rows(FIXTURE, "SELECT count(*), count(DISTINCT user_id) FROM messages") == [(228, 3)]
    assert rows(FIXTURE, "SELECT run_id, user_id FROM screener_flags") == [(1, "user-023")]
    assert SCHEMA_VERSION == len(migrations()) == migrations()[-1][0]


def test_opening_a_version_1_database_upgrades_it_in_place_and_keeps_every_row(v1):
    columns = {"screener_flags": V1_FLAG_COLUMNS, "screener_runs": V1_RUN_COLUMNS}
    before = {t: table_rows(v1, t, columns.get(t, "*")) for t in V1_TABLES
              if t not in ("screener_flags", "screener_scores")}
    flags_before = table_rows(v1, "screener_flags", V1_FLAG_COLUMNS)
    scores_before = table_rows(v1, "screener_scores", V1_SCORE_COLUMNS)
    with Store(v1, Settings()) as store:
        store.ensure_schema()
        assert store.schema_version() == SCHEMA_VERSION
    assert version(v1) == str(SCHEMA_VERSION)
    assert {t: table_rows(v1, t, columns.get(t, "*")) for t in before} == before
    assert table_rows(v1, "screener_flags", V1_FLAG_COLUMNS) == flags_before
    assert table_rows(v1, "screener_scores", V1_SCORE_COLUMNS) == scores_before
    # The one rule version 1 applied, with its reason rebuilt from the flag's counts and run 1's settings.
    assert table_rows(v1, "screener_flags", "user_id, rule, reason") == [
        ("user-023", "high_negative_share", V1_FLAG_REASON)]


def test_upgraded_binary_scores_get_p_positive_as_the_rest_and_no_p_neutral(v1):
    labels_before = table_rows(v1, "screener_scores", "message_id, label")
    with Store(v1, Settings()) as store:
        store.ensure_schema()
    assert rows(v1, "SELECT count(*), count(p_neutral), count(p_positive) FROM screener_scores") == [(228, 0, 228)]
    assert rows(v1, "SELECT count(*) FROM screener_scores WHERE p_positive <> 1 - p_negative") == [(0,)]
    # An old label named the top class of a binary model at the 0.5 threshold; the label rule reads it the same way.
    assert rows(v1, "SELECT count(*) FROM screener_scores WHERE label <> CASE WHEN p_negative >= 0.5 "
                    "THEN 'negative' ELSE 'positive' END") == [(0,)]
    with Store(v1, Settings(), read_only=True) as store:
        relabelled = store.con.execute("SELECT message_id, screener_label(p_negative, p_neutral, p_positive, 0.5) "
                                       "FROM screener_scores ORDER BY ALL").fetchall()
    assert relabelled == labels_before


def test_a_scan_with_the_same_model_flags_the_upgraded_scores_as_version_1_did(v1):
    """Nothing is left to score for the model of run 1, so run 2's flags, with the settings run 1 recorded, come from
    the upgraded scores alone."""
    [(model_id, config)] = rows(v1, "SELECT model_id, config FROM screener_runs WHERE run_id = 1")
    same_model = KeywordClassifier(word="e")
    same_model.model_id = model_id
    result = scan(v1, Settings(**json.loads(config)), as_of=AS_OF, classifier=same_model, progress=False)
    assert (result.run_id, result.messages_scored, result.users_flagged) == (2, 0, 1)
    assert same_model.calls == 0
    columns = V1_FLAG_COLUMNS.replace("run_id, ", "")
    assert table_rows(v1, "screener_flags WHERE run_id = 2", columns) == table_rows(
        v1, "screener_flags WHERE run_id = 1", columns)


def test_an_upgraded_database_has_the_shape_of_a_new_one(v1, tmp_path):
    with Store(v1, Settings()) as store:
        store.ensure_schema()
    with Store(tmp_path / "new.duckdb", Settings()) as store:
        store.ensure_schema()
    assert shape(v1) == shape(tmp_path / "new.duckdb")
    assert ("rule", "VARCHAR", "NO") in shape(v1)["screener_flags"]
    assert ("reason", "VARCHAR", "YES") in shape(v1)["screener_flags"]


def test_a_failed_upgrade_leaves_the_database_at_version_1_untouched(v1):
    # A column migration 002 adds already exists, so its second statement fails after the first has run.
    con = duckdb.connect(str(v1))
    con.execute("ALTER TABLE screener_flags ADD COLUMN reason VARCHAR")
    con.close()
    before = shape(v1)
    with Store(v1, Settings()) as store:
        with pytest.raises(SchemaError, match=f"upgrading screener schema version 1 to {SCHEMA_VERSION} failed.*"
                                              "left at version 1"):
            store.ensure_schema()
    assert version(v1) == "1"
    assert shape(v1) == before
    assert table_rows(v1, "screener_flags", "user_id") == [("user-023",)]


def test_a_read_only_open_of_a_version_1_database_is_refused_and_changes_nothing(v1):
    with Store(v1, Settings(), read_only=True) as store:
        with pytest.raises(SchemaError, match=f"version 1, older than this release's {SCHEMA_VERSION}.*screener scan"
                           ) as err:
            store.ensure_schema()
    assert err.value.exit_code == 6
    assert version(v1) == "1"


def test_a_newer_version_is_refused_with_exit_code_6_and_left_alone(v1):
    con = duckdb.connect(str(v1))
    newer = str(SCHEMA_VERSION + 1)
    con.execute("UPDATE screener_meta SET value = $v WHERE key = 'schema_version'", {"v": newer})
    con.close()
    before = shape(v1)
    result = CliRunner().invoke(main, ["scan", str(v1), "--as-of", AS_OF.isoformat(), "--no-progress"])
    assert result.exit_code == 6, result.output
    assert f"schema version {newer}; this release reads version {SCHEMA_VERSION}" in result.output
    assert version(v1) == newer and shape(v1) == before


def test_a_scan_after_the_upgrade_adds_a_run_and_flags_with_rule_and_reason(v1):
    # The keyword double calls a message negative when it contains an "e". In the 7 days before as_of user-001 has
    # 3 messages (too few), user-002 6 of 6 with an "e", user-023 9 of 10.
    in_window = rows(v1, """
        SELECT user_id, count(*), count(*) FILTER (WHERE contains(text, 'e')) FROM messages
        WHERE sent_at > TIMESTAMPTZ '2026-02-22 00:00:00+00' AND sent_at <= TIMESTAMPTZ '2026-03-01 00:00:00+00'
        GROUP BY user_id ORDER BY user_id""")
    assert in_window == [("user-001", 3, 3), ("user-002", 6, 6), ("user-023", 10, 9)]
    result = scan(v1, Settings(), as_of=AS_OF, classifier=KeywordClassifier(word="e"), rescore=True, progress=False)
    assert (result.run_id, result.messages_scored, result.users_flagged) == (2, 228, 2)
    assert rows(v1, "SELECT run_id, status FROM screener_runs ORDER BY run_id") == [(1, "completed"),
                                                                                   (2, "completed")]
    assert table_rows(v1, "screener_flags WHERE run_id = 1", "user_id, rule, reason") == [
        ("user-023", "high_negative_share", V1_FLAG_REASON)]
    # Wilson lower bounds: 6 of 6 -> 0.610, 9 of 10 -> 0.596.
    assert table_rows(v1, "screener_flags WHERE run_id = 2", "rank, user_id, rule, reason") == [
        (1, "user-002", "high_negative_share",
         "6 of 6 messages in the last 7 days negative (100%, lower bound 61%), threshold 25%, lower bound at least "
         "12.5%, with at least 5 messages"),
        (2, "user-023", "high_negative_share",
         "9 of 10 messages in the last 7 days negative (90%, lower bound 60%), threshold 25%, lower bound at least "
         "12.5%, with at least 5 messages"),
    ]


def test_cli_scan_report_and_flags_on_an_upgraded_database(v1, tiny_model, tiny_threshold):
    runner = CliRunner()
    scanned = runner.invoke(main, ["scan", str(v1), "--as-of", "2026-03-01T00:00:00+00:00", "--model",
                                   str(tiny_model), "--rescore", "--no-progress", "--json",
                                   "--threshold", str(tiny_threshold)])
    assert scanned.exit_code == 0, scanned.output
    assert json.loads(scanned.stdout)["run_id"] == 2
    assert version(v1) == str(SCHEMA_VERSION)

    old = runner.invoke(main, ["flags", str(v1), "--run", "1", "--json"])
    assert old.exit_code == 0, old.output
    [flag] = json.loads(old.stdout)
    assert (flag["user_id"], flag["rule"], flag["reason"]) == ("user-023", "high_negative_share", V1_FLAG_REASON)

    report = runner.invoke(main, ["report", str(v1), "--run", "1", "--format", "json", "-o", "-"])
    assert report.exit_code == 0, report.output
    document = json.loads(report.stdout)
    assert [(f["user_id"], f["rule"], f["reason"]) for f in document["flagged"]] == [
        ("user-023", "high_negative_share", V1_FLAG_REASON)]
    assert [r["name"] for r in document["settings"]["rules"]] == ["high_negative_share"]

    new = runner.invoke(main, ["flags", str(v1), "--json"])
    assert new.exit_code == 0, new.output
    assert all(f["rule"] == "high_negative_share" and f["reason"] for f in json.loads(new.stdout))


@pytest.mark.slow
def test_the_upgraded_database_keeps_its_binary_scores_until_a_rescore_with_the_three_way_default(v1):
    """The version-1 scores came from a binary model that no longer ships: a plain scan refuses to mix models and
    writes nothing; --rescore adds the three-way default's scores beside them, every class probability kept."""
    scores_v1 = table_rows(v1, "screener_scores", "message_id, model_id, p_negative")
    scan = ["scan", str(v1), "--as-of", "2026-03-01T00:00:00+00:00", "--device", "cpu", "--no-progress", "--json"]
    refused = CliRunner().invoke(main, scan)
    assert refused.exit_code == 5 and "--rescore" in refused.output
    assert table_rows(v1, "screener_scores", "message_id, model_id, p_negative") == scores_v1
    rescored = CliRunner().invoke(main, [*scan, "--rescore"])
    assert rescored.exit_code == 0, rescored.output
    assert json.loads(rescored.stdout)["messages_scored"] == 228
    by_model = rows(v1, "SELECT model_id, count(*), count(p_neutral) FROM screener_scores GROUP BY ALL ORDER BY 1")
    assert sorted(by_model) == sorted([(scores_v1[0][1], 228, 0), (json.loads(rescored.stdout)["model_id"], 228, 228)])
