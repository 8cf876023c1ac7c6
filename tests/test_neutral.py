"""Neutral-aware scoring: every class probability is stored, a message is negative only when negative is its top
class and reaches the threshold, and the flag share is negative messages over all messages of the window."""

from __future__ import annotations

import itertools
from datetime import timedelta

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import AS_OF, KeywordClassifier, ThreeWayKeywordClassifier, write_archive
from screener import aggregate, runs
from screener.classifiers.base import BINARY_LABELS, THREE_WAY_LABELS
from screener.ray_engine import SCORES_VIEW, ScoreWorker
from screener.report import render
from screener.scan import scan
from screener.settings import Settings
from screener.store import Store

BAD, OK, GOOD = "bad day", "ok day", "great day"


def archive_rows() -> list[tuple]:
    """Four users, every message in the last 7 days before AS_OF (so the 7- and 30-day windows hold the same); the
    default rule flags a share of at least 0.25 with a Wilson lower bound of at least 0.15 and at least 5 messages:
    - neg:     4 bad, 2 ok         -> 4 of 6 negative (67%, lower bound 0.30): flagged. Reading "not positive" as
      negative: 6 of 6.
    - neutral: 1 bad, 7 ok         -> 1 of 8 (12%, lower bound 0.02). Reading "not positive" as negative: 8 of 8,
      flagged.
    - mixed:   3 bad, 8 ok, 2 good -> 3 of 13 (23%, lower bound 0.08): not flagged. Leaving neutral out of the
      share: 3 of 5 (60%, lower bound 0.23), flagged.
    - happy:   5 good              -> 0 of 5."""
    spec = {"neg": [BAD] * 4 + [OK] * 2, "neutral": [BAD] + [OK] * 7, "mixed": [BAD] * 3 + [OK] * 8 + [GOOD] * 2,
            "happy": [GOOD] * 5}
    rows = []
    for user, texts in spec.items():
        for i, text in enumerate(texts):
            rows.append((f"{user}-{i}", user, AS_OF - timedelta(hours=i + 1), text))
    return rows


def scanned(tmp_path, settings: Settings | None = None, classifier=None):
    db = write_archive(tmp_path / "a.duckdb", archive_rows())
    result = scan(db, settings or Settings(), as_of=AS_OF, classifier=classifier or ThreeWayKeywordClassifier(),
                  progress=False)
    return db, result


def query(db, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_a_three_way_scan_stores_every_class_probability_and_the_top_class(tmp_path):
    db, result = scanned(tmp_path)
    assert result.messages_scored == 32
    got = query(db, """
        SELECT s.text, sc.p_negative, sc.p_neutral, sc.p_positive, sc.label, count(*)
        FROM screener_scores sc JOIN messages s USING (message_id) GROUP BY ALL ORDER BY s.text""")
    assert [(t, label, n) for t, *_, label, n in got] == [
        (BAD, "negative", 8), (GOOD, "positive", 7), (OK, "neutral", 17)]
    for text, *proba, _, _ in got:
        label = ThreeWayKeywordClassifier.expected_label(text)
        assert proba == pytest.approx(ThreeWayKeywordClassifier.PROBA[label])


def test_a_binary_scan_stores_no_p_neutral_and_p_positive_as_the_rest(tmp_path):
    db, _ = scanned(tmp_path, classifier=KeywordClassifier())
    got = query(db, "SELECT DISTINCT p_negative, p_neutral, p_positive, label FROM screener_scores ORDER BY ALL")
    assert got == [(pytest.approx(0.1), None, pytest.approx(0.9), "positive"),
                   (pytest.approx(0.9), None, pytest.approx(0.1), "negative")]


def test_neutral_messages_count_in_the_share_and_never_as_negative(tmp_path):
    db, result = scanned(tmp_path)
    assert (result.users, result.users_flagged) == (4, 1)
    with Store(db, Settings(), read_only=True) as store:
        [flag] = aggregate.flags_json(store, result.run_id)
    assert (flag["user_id"], flag["n_messages"], flag["n_negative"]) == ("neg", 6, 4)
    assert flag["ratio"] == pytest.approx(4 / 6) and flag["ratio_long"] == pytest.approx(4 / 6)
    # Wilson lower bound of 4 of 6 at z = 1.96: (p + z²/2n - z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n).
    assert flag["wilson_lower"] == pytest.approx(0.29999, abs=1e-5)
    assert flag["reason"] == ("4 of 6 messages in the last 7 days negative (67%, lower bound 30%), threshold 25%, "
                              "lower bound at least 12.5%, with at least 5 messages")


def user_stats(db, settings: Settings, model_id: str) -> dict[str, tuple]:
    with runs.open_run(db) as (store, _):
        aggregate.compute_user_stats(store, settings, model_id, AS_OF)
        return {u: tuple(rest) for u, *rest in store.con.execute(
            "SELECT user_id, n_short, neg_short, ratio_short, n_last, neg_last FROM screener_user_stats").fetchall()}


def test_every_user_s_share_is_negative_over_all_messages_of_the_window(tmp_path):
    db, result = scanned(tmp_path)
    stats = user_stats(db, Settings(), result.model_id)
    assert stats == {
        "neg": (6, 4, pytest.approx(4 / 6), 6, 4),
        "neutral": (8, 1, pytest.approx(1 / 8), 8, 1),
        "mixed": (13, 3, pytest.approx(3 / 13), 13, 3),
        "happy": (5, 0, 0.0, 5, 0),
    }


def test_the_threshold_is_an_extra_bar_for_negative_and_never_makes_a_neutral_message_negative(tmp_path):
    db, result = scanned(tmp_path, Settings(negative_threshold=0.3))
    # An ok message's P(negative) 0.40 is above 0.3, but neutral (0.55) is its top class.
    assert result.users_flagged == 1
    assert user_stats(db, Settings(negative_threshold=0.3), result.model_id)["neutral"][:2] == (8, 1)
    strict = Settings(negative_threshold=0.85)
    # A bad message's P(negative) 0.80 is its top class but under 0.85: the stored label is then the larger of
    # neutral (0.15) and positive (0.05), and no user has a negative message.
    (tmp_path / "strict").mkdir()
    db, result = scanned(tmp_path / "strict", strict)
    assert result.users_flagged == 0
    assert query(db, "SELECT DISTINCT label FROM screener_scores ORDER BY ALL") == [("neutral",), ("positive",)]
    assert {u: s[1] for u, s in user_stats(db, strict, result.model_id).items()} == {
        "neg": 0, "neutral": 0, "mixed": 0, "happy": 0}


def test_the_report_orders_evidence_by_p_negative_and_shows_each_message_s_label(tmp_path):
    db, result = scanned(tmp_path)
    with runs.open_run(db) as (store, run_id):
        data = aggregate.report_data(store, run_id)
    [user] = data["flagged"]
    assert [(e["p_negative"], e["label"]) for e in user["evidence"]] == [
        (pytest.approx(0.8), "negative")] * 4 + [(pytest.approx(0.4), "neutral")]
    assert sum(d["n"] for d in user["daily"]) == 6 and sum(d["neg"] for d in user["daily"]) == 4
    page = render(data).decode()
    assert page.count('<span class="meta">negative · ') == 4 and page.count('<span class="meta">neutral · ') == 1


def test_ray_score_files_carry_every_class_probability_into_the_scores_table(tmp_path):
    clf = ThreeWayKeywordClassifier()
    pending = tmp_path / "part-000000.parquet"
    pq.write_table(pa.table({"message_id": ["a", "b", "c"], "text": [BAD, OK, GOOD]}), pending)
    worker = ScoreWorker("three-way", "cpu", clf.model_id, run_id=1, threshold=0.5, token_budget=None, max_rows=8,
                         scores_dir=str(tmp_path / "scores"), threads=None, loader=lambda name, device: clf)
    (path,) = worker(pa.table({"path": [str(pending)]})).column("file").to_pylist()
    with Store(tmp_path / "r.duckdb", Settings()) as store:
        store.ensure_schema()
        store.con.register(SCORES_VIEW, pq.read_table(path))
        assert store.run("ray_scores_insert", {"model_id": clf.model_id}).fetchall() == [(3,)]
        store.con.unregister(SCORES_VIEW)
        got = store.con.execute(
            "SELECT message_id, p_negative, p_neutral, p_positive, label FROM screener_scores ORDER BY 1").fetchall()
    assert got == [("a", *map(pytest.approx, clf.PROBA["negative"]), "negative"),
                   ("b", *map(pytest.approx, clf.PROBA["neutral"]), "neutral"),
                   ("c", *map(pytest.approx, clf.PROBA["positive"]), "positive")]


def test_the_stored_label_and_the_sql_label_rule_agree_on_ties_and_thresholds(tmp_path):
    """screener.runs.class_labels labels the scores at scan time; the screener_label macro labels them for the flag
    windows and the report: both must give the same label for every score, ties included."""
    steps = np.arange(0, 21) / 20
    three = np.array([(n, u, 1 - n - u) for n, u in itertools.product(steps, steps) if n + u <= 1 + 1e-9],
                     dtype=np.float32)
    binary = np.stack([steps, 1 - steps], axis=1).astype(np.float32)
    with Store(tmp_path / "r.duckdb", Settings()) as store:
        for threshold in (0.3, 0.5, 0.55):
            for proba, labels in ((three, THREE_WAY_LABELS), (binary, BINARY_LABELS)):
                table = runs.scores_table([str(i) for i in range(len(proba))], "m", 1, proba, labels, threshold)
                store.con.register("labelled", table)
                disagree = store.con.execute(
                    "SELECT count(*) FROM labelled "
                    "WHERE label <> screener_label(p_negative, p_neutral, p_positive, $t)", {"t": threshold}
                ).fetchall()[0][0]
                store.con.unregister("labelled")
                assert disagree == 0, (threshold, labels)
    # A binary score of exactly 1/2 is negative at the 0.5 threshold, as before there were three classes.
    assert runs.scores_table(["x"], "m", 1, np.array([[0.5, 0.5]]), BINARY_LABELS, 0.5).column("label").to_pylist() \
        == ["negative"]
