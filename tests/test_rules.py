"""The flag rules: one statement file and its settings each, the users they flag with the reason they give
(hand-computed, as_of = 2026-03-01 12:00 UTC), the priority between rules and the descriptions the report shows."""

import dataclasses
import re
from datetime import timedelta

import duckdb
import pytest

from conftest import AS_OF, KeywordClassifier, write_archive
from screener import aggregate, queries, rules
from screener.scan import scan
from screener.settings import FLAG_RULES, Settings
from screener.store import Source, Store

BAD, GOOD = "bad day", "fine day"


def msgs(user, negative, positive):
    """``negative`` then ``positive`` messages of ``user``, one an hour going back from an hour before AS_OF."""
    texts = [BAD] * negative + [GOOD] * positive
    return [(f"{user}-{i}", user, AS_OF - timedelta(hours=i + 1), text) for i, text in enumerate(texts)]


def flags_of(tmp_path, rows, settings=None):
    db = write_archive(tmp_path / "a.duckdb", rows)
    result = scan(db, settings or Settings(), as_of=AS_OF, classifier=KeywordClassifier(), progress=False)
    with Store(db, Settings(), read_only=True) as store:
        return [(f["user_id"], f["rule"], f["reason"]) for f in aggregate.flags_json(store, result.run_id)]


def test_every_rule_has_one_file_in_sql_rules_and_every_file_there_is_a_rule():
    assert rules.rule_names() == list(FLAG_RULES) == ["high_negative_share"]
    assert queries.names("rules") == sorted(FLAG_RULES)


@pytest.mark.parametrize("rule", list(FLAG_RULES))
def test_each_rule_binds_its_name_priority_and_exactly_its_settings(rule):
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert set(FLAG_RULES[rule]) <= fields
    body = "\n".join(line for line in queries.load(rule).splitlines() if not line.startswith("--"))
    assert set(re.findall(r"\$([a-z_]+)", body)) == {"rule", "priority", *FLAG_RULES[rule]}
    assert set(re.findall(r"\$([a-z_]+)", queries.description(rule))) <= set(FLAG_RULES[rule])
    assert "INSERT INTO screener_rule_hits" in body
    assert rules.rule_params(rule, Settings())["rule"] == rule


def test_high_negative_share_needs_the_minimum_count_share_and_lower_bound_and_says_why(tmp_path):
    # Defaults: at least 5 messages, a share of at least 0.25 and a Wilson lower bound (z = 1.96) of at least 0.15:
    # (p + z^2/2n - z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n).
    rows = (msgs("three_of_five", 3, 2)      # 60%, lower bound 0.2307: flagged
            + msgs("two_of_five", 2, 3)      # 40%, lower bound 0.1176: below 0.15
            + msgs("four_of_ten", 4, 6)      # 40% again, but of 10 messages: lower bound 0.1682, flagged
            + msgs("three_of_ten", 3, 7)     # 30%, lower bound 0.1078
            + msgs("23_of_100", 23, 77)      # lower bound 0.1584, but a share of 23%, below 25%
            + msgs("four_of_four", 4, 0))    # 100%, but fewer than 5 messages
    got = flags_of(tmp_path, rows)
    assert got == [
        ("three_of_five", "high_negative_share",
         "3 of 5 messages in the last 7 days negative (60%, lower bound 23%), threshold 25%, lower bound at least "
         "12.5%, with at least 5 messages"),
        ("four_of_ten", "high_negative_share",
         "4 of 10 messages in the last 7 days negative (40%, lower bound 17%), threshold 25%, lower bound at least "
         "12.5%, with at least 5 messages"),
    ]


def test_high_negative_share_reason_follows_the_settings(tmp_path):
    # 6 of 8: 75%, lower bound 0.4093, flagged; 3 of 4: 75% but lower bound 0.3006; 6 of 9: lower bound 0.3542 but
    # a share of 67%.
    got = flags_of(tmp_path, msgs("six_of_eight", 6, 2) + msgs("three_of_four", 3, 1) + msgs("six_of_nine", 6, 3),
                   Settings(min_messages=4, min_ratio=0.7, min_lower_bound=0.35, short_window_days=3))
    assert got == [("six_of_eight", "high_negative_share",
                    "6 of 8 messages in the last 3 days negative (75%, lower bound 41%), threshold 70%, lower bound "
                    "at least 35%, with at least 4 messages")]


def test_a_user_several_rules_match_is_flagged_once_under_the_first(tmp_path):
    with Store(tmp_path / "r.duckdb", Settings()) as store:
        store.ensure_schema()
        con = store.con
        con.execute("CREATE TEMP TABLE screener_user_stats AS SELECT * FROM (VALUES "
                    "('a', 6, 5, 0.833, 0.5, 10, 6, 0.6, 6, 5, 0.8, 0, NULL, false),"
                    "('b', 6, 4, 0.667, 0.4, 10, 5, 0.5, 6, 4, 0.7, 0, NULL, false)) AS t(user_id, n_short, "
                    "neg_short, ratio_short, wilson_lower, n_long, neg_long, ratio_long, n_last, neg_last, "
                    "ratio_last, baseline_n, baseline_ratio, escalating)")
        store.run("rule_hits_create")
        con.executemany("INSERT INTO screener_rule_hits VALUES (?, ?, ?, ?)", [
            ("second", 1, "a", "why second"), ("first", 0, "a", "why first"), ("second", 1, "b", "only second")])
        aggregate.store_flags(store, 7)
        got = con.execute("SELECT rank, user_id, rule, reason FROM screener_flags ORDER BY rank").fetchall()
    assert got == [(1, "a", "first", "why first"), (2, "b", "second", "only second")]


def test_descriptions_fill_in_the_settings_of_the_run():
    assert rules.describe(Settings()) == [{
        "name": "high_negative_share",
        "description": "At least 5 messages in the last 7 days, with a negative share of at least 0.25, and of at "
                       "least 0.125 even at the low end of its confidence interval (the Wilson lower bound)."}]
    [custom] = rules.describe(Settings(min_messages=3, min_ratio=0.75, min_lower_bound=0.5, short_window_days=2))
    assert custom["description"] == ("At least 3 messages in the last 2 days, with a negative share of at least "
                                     "0.75, and of at least 0.5 even at the low end of its confidence interval (the "
                                     "Wilson lower bound).")


def test_escalation_alone_flags_nobody(tmp_path):
    # Baseline 0 of 10, short window 2 of 5 (40%): a rise of 0.4 >= 0.3 marks the user escalating, but the lower
    # bound of 2 of 5 (0.1176) is below the 0.15 the only rule needs.
    base = [(f"b{i}", "rising", AS_OF - timedelta(days=10, hours=i), GOOD) for i in range(10)]
    db = write_archive(tmp_path / "a.duckdb", base + msgs("rising", 2, 3))
    scan(db, Settings(), as_of=AS_OF, classifier=KeywordClassifier(), progress=False)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM screener_flags").fetchone() == (0,)
    con.close()
    with Store(db, Settings(), read_only=True) as store:
        store.attach_source(Source("messages", parquet=False))
        aggregate.compute_user_stats(store, Settings(), KeywordClassifier().model_id, AS_OF)
        assert store.con.execute("SELECT escalating FROM screener_user_stats").fetchall() == [(True,)]
        assert store.con.execute("SELECT count(*) FROM screener_rule_hits").fetchone() == (0,)
