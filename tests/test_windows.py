"""Window math and the flag rule against hand-computed expectations (as_of = 2026-03-01 12:00 UTC)."""

import math
from datetime import datetime, timedelta, timezone

import pytest

from conftest import AS_OF, KeywordClassifier, write_archive
from screener import aggregate
from screener.scan import scan
from screener.settings import Settings
from screener.store import Source, Store

BAD, GOOD = "bad day", "fine day"


def user_stats_rows(store):
    """The rows of ``screener_user_stats``, each marked ``flagged`` when a flag rule matched the user."""
    cursor = store.con.execute(
        "SELECT s.*, s.user_id IN (SELECT user_id FROM screener_rule_hits) AS flagged "
        "FROM screener_user_stats s ORDER BY s.user_id")
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def stats_for(tmp_path, rows, settings=None, tz=True, as_of=AS_OF):
    settings = settings or Settings()
    db = write_archive(tmp_path / "a.duckdb", rows, tz=tz)
    result = scan(db, settings, as_of=as_of, classifier=KeywordClassifier(), progress=False)
    with Store(db, settings, read_only=True) as store:
        store.attach_source(Source("messages", parquet=False))
        aggregate.compute_user_stats(store, settings, result.model_id, as_of)
        stats = {r["user_id"]: r for r in user_stats_rows(store)}
        flags = aggregate.flags_json(store, result.run_id)
    return stats, flags


def msgs(user, *spec):
    """spec: (timedelta before AS_OF, text) pairs."""
    return [(f"{user}-{i}", user, AS_OF - delta, text) for i, (delta, text) in enumerate(spec)]


def test_message_exactly_on_window_edge_is_outside_and_one_second_later_is_inside(tmp_path):
    rows = msgs("edge",
                (timedelta(days=7), BAD),                      # on the edge: outside the 7-day window
                (timedelta(days=7) - timedelta(seconds=1), BAD),
                (timedelta(0), GOOD),                          # exactly as_of: inside
                (-timedelta(seconds=1), BAD))                  # after as_of: ignored everywhere
    stats, _ = stats_for(tmp_path, rows)
    s = stats["edge"]
    assert (s["n_short"], s["neg_short"]) == (2, 1)
    assert (s["n_long"], s["neg_long"]) == (3, 2)
    assert s["ratio_short"] == pytest.approx(0.5)


def test_timezone_aware_times_are_compared_in_utc(tmp_path):
    plus5 = timezone(timedelta(hours=5))
    edge_local = datetime(2026, 2, 22, 17, 0, tzinfo=plus5)      # = 2026-02-22 12:00 UTC, the 7-day edge
    inside_local = datetime(2026, 2, 22, 17, 0, 1, tzinfo=plus5)
    rows = [("a", "tz", edge_local, BAD), ("b", "tz", inside_local, BAD)]
    stats, _ = stats_for(tmp_path, rows)
    assert (stats["tz"]["n_short"], stats["tz"]["n_long"]) == (1, 2)


def test_naive_timestamps_are_read_as_utc(tmp_path):
    rows = [("a", "naive", datetime(2026, 2, 22, 12, 0, 0), BAD),
            ("b", "naive", datetime(2026, 2, 22, 12, 0, 1), BAD)]
    stats, _ = stats_for(tmp_path, rows, tz=False)
    assert stats["naive"]["n_short"] == 1


def test_as_of_given_in_another_zone_means_the_same_instant(tmp_path):
    rows = msgs("u", (timedelta(days=7) - timedelta(seconds=1), BAD))
    as_of_local = AS_OF.astimezone(timezone(timedelta(hours=-8)))
    stats, _ = stats_for(tmp_path, rows, as_of=as_of_local)
    assert stats["u"]["n_short"] == 1


def test_user_with_one_message_has_ratio_one_wilson_0_2065_and_is_not_flagged(tmp_path):
    stats, flags = stats_for(tmp_path, msgs("one", (timedelta(days=1), BAD)))
    s = stats["one"]
    assert (s["n_short"], s["neg_short"], s["ratio_short"]) == (1, 1, 1.0)
    assert s["wilson_lower"] == pytest.approx(1 / (1 + 1.96 ** 2), abs=1e-9)  # 0.20654
    assert not s["flagged"] and flags == []


def test_user_with_no_message_in_window_has_null_ratio_and_is_not_flagged(tmp_path):
    rows = msgs("old", *[(timedelta(days=20, hours=h), BAD) for h in range(6)])
    stats, flags = stats_for(tmp_path, rows)
    s = stats["old"]
    assert (s["n_short"], s["ratio_short"], s["n_long"], s["neg_long"]) == (0, None, 6, 6)
    assert s["wilson_lower"] == 0 and not s["flagged"] and flags == []


def test_users_without_any_scored_message_before_as_of_are_absent(tmp_path):
    rows = msgs("future", (-timedelta(days=1), BAD)) + msgs("now", (timedelta(hours=1), GOOD))
    stats, _ = stats_for(tmp_path, rows)
    assert set(stats) == {"now"}


def test_flag_rule_needs_min_messages_and_min_ratio(tmp_path):
    rows = (msgs("five_of_five", *[(timedelta(days=1, hours=h), BAD) for h in range(5)])
            + msgs("four_of_four", *[(timedelta(days=1, hours=h), BAD) for h in range(4)])
            + msgs("three_of_five", *[(timedelta(days=1, hours=h), BAD if h < 3 else GOOD) for h in range(5)]))
    stats, flags = stats_for(tmp_path, rows)
    # 3 of 5 is exactly the 0.6 minimum (inclusive); 4 of 4 has too few messages.
    assert [f["user_id"] for f in flags] == ["five_of_five", "three_of_five"]
    assert stats["three_of_five"]["ratio_short"] == pytest.approx(0.6)
    assert not stats["four_of_four"]["flagged"]


def wilson_lower(k, n, z=1.96):
    p = k / n
    return (p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)


def test_wilson_ranking_puts_45_of_50_above_3_of_3(tmp_path):
    rows = (msgs("three", *[(timedelta(hours=h + 1), BAD) for h in range(3)])
            + msgs("fortyfive", *[(timedelta(hours=h + 1), BAD if h < 45 else GOOD) for h in range(50)]))
    stats, flags = stats_for(tmp_path, rows, Settings(min_messages=3))
    assert stats["three"]["wilson_lower"] == pytest.approx(0.43850, abs=1e-5)
    assert stats["fortyfive"]["wilson_lower"] == pytest.approx(0.78639, abs=1e-5)
    assert stats["fortyfive"]["wilson_lower"] == pytest.approx(wilson_lower(45, 50), abs=1e-12)
    assert [f["user_id"] for f in flags] == ["fortyfive", "three"]
    assert [f["rank"] for f in flags] == [1, 2]


def test_escalation_compares_window_with_the_baseline_before_it(tmp_path):
    base = [(timedelta(days=10 + d), BAD if d < 1 else GOOD) for d in range(10)]          # baseline 1/10
    gloomy_base = [(timedelta(days=10 + d), BAD if d < 6 else GOOD) for d in range(10)]   # baseline 6/10
    recent = [(timedelta(days=1, hours=h), BAD if h < 5 else GOOD) for h in range(6)]     # window 5/6
    stats, flags = stats_for(tmp_path, msgs("turning", *base, *recent) + msgs("gloomy", *gloomy_base, *recent))
    assert stats["turning"]["baseline_ratio"] == pytest.approx(0.1)
    assert stats["turning"]["escalating"]                                  # 0.833 - 0.1 >= 0.3
    assert stats["gloomy"]["baseline_ratio"] == pytest.approx(0.6)
    assert not stats["gloomy"]["escalating"]                               # 0.833 - 0.6 < 0.3
    assert {f["user_id"] for f in flags} == {"turning", "gloomy"}


def test_baseline_needs_enough_messages(tmp_path):
    rows = msgs("thin", (timedelta(days=10), GOOD), *[(timedelta(days=1, hours=h), BAD) for h in range(5)])
    stats, _ = stats_for(tmp_path, rows)
    assert stats["thin"]["baseline_n"] == 1
    assert stats["thin"]["baseline_ratio"] is None and not stats["thin"]["escalating"]


def test_last_n_counts_the_most_recent_messages_only(tmp_path):
    rows = msgs("u", (timedelta(days=3), GOOD), (timedelta(days=2), GOOD), (timedelta(hours=3), BAD),
                (timedelta(hours=2), BAD), (timedelta(hours=1), BAD))
    stats, _ = stats_for(tmp_path, rows, Settings(last_n=3))
    assert (stats["u"]["n_last"], stats["u"]["neg_last"], stats["u"]["ratio_last"]) == (3, 3, 1.0)


def test_threshold_decides_what_counts_as_negative(tmp_path):
    rows = msgs("u", *[(timedelta(hours=h + 1), BAD) for h in range(5)])
    stats, flags = stats_for(tmp_path, rows, Settings(negative_threshold=0.95))  # keyword model says 0.9
    assert stats["u"]["neg_short"] == 0 and flags == []
