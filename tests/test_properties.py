"""Property-based tests: the SQL window aggregation and flag rule against a plain-Python reference over random
archives, time zones and window edges."""

import math
from datetime import datetime, timedelta, timezone

from hypothesis import example, given, settings as hsettings, strategies as st

from screener import aggregate
from screener.settings import Settings
from screener.store import Source, Store

MODEL = "prop-model"
DAY = 86400
# Offsets (seconds before as_of) on and around every window edge, plus arbitrary ones; negative = in the future.
EDGES = [0, 1, -1, 7 * DAY, 7 * DAY - 1, 7 * DAY + 1, 30 * DAY, 30 * DAY - 1, 30 * DAY + 1, 37 * DAY,
         37 * DAY - 1, 37 * DAY + 1, 3 * DAY, 14 * DAY]
offsets = st.one_of(st.sampled_from(EDGES), st.integers(-2 * DAY, 45 * DAY))
messages = st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), offsets, st.booleans()), max_size=60)
zones = st.integers(-12 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
rules = st.fixed_dictionaries({
    "short_window_days": st.sampled_from([1, 7]), "long_window_days": st.sampled_from([7, 30]),
    "baseline_days": st.sampled_from([7, 30]), "last_n": st.sampled_from([1, 3, 20]),
    "min_messages": st.integers(1, 6), "min_ratio": st.sampled_from([0.0, 0.5, 0.6, 1.0]),
    "min_lower_bound": st.sampled_from([0.0, 0.15, 0.5]),
    "escalation_delta": st.sampled_from([0.0, 0.3]), "baseline_min_messages": st.integers(1, 5)})

AS_OF = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)


def user_stats_rows(store):
    """The rows of ``screener_user_stats``, each marked ``flagged`` when a flag rule matched the user."""
    cursor = store.con.execute(
        "SELECT s.*, s.user_id IN (SELECT user_id FROM screener_rule_hits) AS flagged "
        "FROM screener_user_stats s ORDER BY s.user_id")
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def reference(rows, s: Settings):
    """rows: (user, seconds before as_of, negative). Windows are (as_of - days, as_of]."""
    out = {}
    for user in sorted({u for u, off, _ in rows if off >= 0}):
        mine = [(off, neg) for u, off, neg in rows if u == user and off >= 0]
        def window(lo, hi):  # seconds before as_of, lo exclusive upper age, hi inclusive lower age
            sel = [neg for off, neg in mine if hi <= off < lo]
            return len(sel), sum(sel)
        n_s, k_s = window(s.short_window_days * DAY, 0)
        n_l, k_l = window(s.long_window_days * DAY, 0)
        n_b, k_b = window((s.short_window_days + s.baseline_days) * DAY, s.short_window_days * DAY)
        # Most recent first; ties in time are broken arbitrarily by SQL, so last-N is only compared when untied.
        recent = sorted(mine)[: s.last_n]
        tied = len(mine) > s.last_n and sorted(mine)[s.last_n - 1][0] == sorted(mine)[s.last_n][0]
        ratio = k_s / n_s if n_s else None
        base = k_b / n_b if n_b >= s.baseline_min_messages else None
        z = s.confidence_z
        wilson = 0.0
        if n_s:
            p = ratio
            wilson = max(0.0, (p + z * z / (2 * n_s) - z * math.sqrt(p * (1 - p) / n_s + z * z / (4 * n_s * n_s)))
                         / (1 + z * z / n_s))
        out[user] = {
            "n_short": n_s, "neg_short": k_s, "n_long": n_l, "neg_long": k_l, "baseline_n": n_b,
            "baseline_ratio": base, "wilson_lower": wilson,
            "n_last": len(recent), "neg_last": None if tied else sum(neg for _, neg in recent),
            "flagged": (n_s >= s.min_messages and ratio is not None and ratio >= s.min_ratio
                        and wilson >= s.min_lower_bound),
            "escalating": ratio is not None and base is not None and ratio - base >= s.escalation_delta,
        }
    return out


EDGE_RULE = {"short_window_days": 7, "long_window_days": 30, "baseline_days": 30, "last_n": 20,
             "min_messages": 1, "min_ratio": 0.5, "min_lower_bound": 0.0, "escalation_delta": 0.3,
             "baseline_min_messages": 1}


@hsettings(max_examples=200, deadline=None)
@given(rows=messages, zone=zones, rule=rules, naive=st.booleans())
@example(rows=[("a", 7 * DAY, True), ("a", 7 * DAY - 1, False), ("b", 30 * DAY, True), ("b", 37 * DAY, True),
               ("b", 37 * DAY - 1, True), ("c", 0, True), ("c", -1, True)],
         zone=timezone(timedelta(hours=5)), rule=EDGE_RULE, naive=False)
@example(rows=[("a", 7 * DAY, True), ("a", 7 * DAY - 1, False)], zone=timezone.utc, rule=EDGE_RULE, naive=True)
def test_sql_user_stats_match_python_reference(rows, zone, rule, naive):
    s = Settings(**rule)
    store = Store(":memory:", s)
    con = store.con
    con.execute(f"CREATE TABLE messages (message_id VARCHAR, user_id VARCHAR, sent_at "
                f"{'TIMESTAMP' if naive else 'TIMESTAMPTZ'}, text VARCHAR)")
    con.execute("CREATE TABLE scores_in (message_id VARCHAR, p FLOAT)")
    for i, (user, off, neg) in enumerate(rows):
        when = AS_OF - timedelta(seconds=off)
        when = when.replace(tzinfo=None) if naive else when.astimezone(zone)
        con.execute("INSERT INTO messages VALUES (?, ?, ?, 'x')", [f"m{i}", user, when])
        con.execute("INSERT INTO scores_in VALUES (?, ?)", [f"m{i}", 0.9 if neg else 0.1])
    with store:
        store.ensure_schema()
        store.con.execute("INSERT INTO screener_scores (message_id, model_id, p_negative, p_positive, label, "
                          "scored_at, run_id) SELECT message_id, $m, p, 1 - p, 'x', now(), 0 FROM scores_in",
                          {"m": MODEL})
        store.attach_source(Source("messages", parquet=False))
        aggregate.compute_user_stats(store, s, MODEL, AS_OF.astimezone(zone))
        got = {r["user_id"]: r for r in user_stats_rows(store)}
    want = reference(rows, s)
    assert set(got) == set(want)
    for user, w in want.items():
        g = got[user]
        for key in ("n_short", "neg_short", "n_long", "neg_long", "baseline_n", "n_last", "flagged", "escalating"):
            assert g[key] == w[key], (user, key, g[key], w[key])
        if w["neg_last"] is not None:
            assert g["neg_last"] == w["neg_last"]
        assert math.isclose(g["wilson_lower"], w["wilson_lower"], abs_tol=1e-9)
        assert (g["baseline_ratio"] is None) == (w["baseline_ratio"] is None)
        if w["baseline_ratio"] is not None:
            assert math.isclose(g["baseline_ratio"], w["baseline_ratio"], abs_tol=1e-9)
