"""The simulated archive builder: seeded, its users as the parameters say, its ground truth beside it."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from datetime import timedelta

import pytest

from training.simulate import Population, Texts, build, main, truth_path, write

TEXTS = Texts(labelled={"negative": ["bad 1", "bad 2"], "neutral": ["meh 1", "meh 2"], "positive": ["yay 1"]},
              sms=["sms 1", "sms 2"])
SMALL = Population(ordinary=30, distressed=10, days=14, rate_median=4.0, distress_negative=(0.7, 0.7),
                   ordinary_mix=(0.1, 0.6, 0.3), sms_share=0.5)


def by_user(sim):
    rows = sim.table.to_pylist()
    out = {}
    for r in rows:
        out.setdefault(r["user_id"], []).append(r)
    return out


def test_the_same_seed_gives_the_same_archive_and_another_seed_another():
    a, b, c = build(1, SMALL, TEXTS), build(1, SMALL, TEXTS), build(2, SMALL, TEXTS)
    assert a.table.equals(b.table) and a.distressed == b.distressed
    assert not a.table.equals(c.table)


def test_users_ids_and_times_are_as_the_population_says():
    sim = build(3, SMALL, TEXTS)
    assert len(sim.distressed) == 10 and len(sim.ordinary) == 30 and not sim.distressed & sim.ordinary
    assert sim.distressed | sim.ordinary == {f"user-{i:03d}" for i in range(1, 41)}
    times = sim.table["sent_at"].to_pylist()
    assert min(times) >= sim.as_of - timedelta(days=SMALL.days) and max(times) < sim.as_of
    assert times == sorted(times)
    ids = sim.table["message_id"].to_pylist()
    assert len(set(ids)) == len(ids) == sim.table.num_rows
    # Kinds are shuffled: distressed users are not the last ids.
    assert sorted(sim.distressed) != sorted(sim.distressed | sim.ordinary)[-10:]


def test_distressed_users_turn_mostly_negative_in_the_last_days_only():
    sim = build(4, SMALL, TEXTS)
    start = sim.as_of - timedelta(days=SMALL.distress_days)
    negative = set(TEXTS.labelled["negative"])
    late, early, ordinary = Counter(), Counter(), Counter()
    for user, rows in by_user(sim).items():
        for r in rows:
            bucket = ordinary if user in sim.ordinary else late if r["sent_at"] >= start else early
            bucket[r["text"] in negative] += 1
    # 70% chosen negative, plus the ordinary share (5% of the labelled half) of the rest.
    assert 0.6 < late[True] / sum(late.values()) < 0.8
    assert early[True] / sum(early.values()) < 0.15 and ordinary[True] / sum(ordinary.values()) < 0.15
    # Distressed users write more in the last days (distress_rate 1.5) than before.
    late_per_day = sum(late.values()) / SMALL.distress_days
    early_per_day = sum(early.values()) / (SMALL.days - SMALL.distress_days)
    assert late_per_day > 1.2 * early_per_day


def test_without_sms_texts_every_message_is_a_hand_labelled_one():
    sim = build(5, SMALL, dataclasses.replace(TEXTS, sms=[]))
    labelled = {t for texts in TEXTS.labelled.values() for t in texts}
    assert set(sim.table["text"].to_pylist()) <= labelled and sim.sms_texts == 0
    with_sms = build(5, SMALL, TEXTS)
    assert set(with_sms.table["text"].to_pylist()) & set(TEXTS.sms)


def test_the_truth_is_written_beside_the_archive(tmp_path):
    sim = build(6, SMALL, TEXTS)
    archive = tmp_path / "sim.parquet"
    assert write(sim, archive) == truth_path(archive) == tmp_path / "sim.truth.json"
    truth = json.loads(truth_path(archive).read_text())
    assert truth["distressed"] == sorted(sim.distressed) and truth["ordinary"] == sorted(sim.ordinary)
    assert truth["seed"] == 6 and truth["population"]["distress_negative"] == [0.7, 0.7]
    assert truth["as_of"] == sim.as_of.isoformat() and truth["messages"] == sim.table.num_rows


def test_the_command_line_builds_from_the_committed_texts_without_sms(tmp_path, capsys):
    out = tmp_path / "a.parquet"
    main(["--out", str(out), "--seed", "9", "--ordinary", "4", "--distressed", "2", "--days", "8",
          "--sms", str(tmp_path / "absent.tsv")])
    assert "6 users (2 distressed)" in capsys.readouterr().out
    assert json.loads(truth_path(out).read_text())["sms_texts_available"] == 0


@pytest.mark.parametrize("change", [
    {"ordinary": 0, "distressed": 0}, {"distress_days": 0}, {"distress_days": 15}, {"rate_median": 0.0},
    {"activity": (0.0, 1.0)}, {"distress_negative": (0.9, 0.5)}, {"ordinary_mix": (0.5, 0.5, 0.5)},
    {"sms_share": 1.5},
])
def test_impossible_populations_are_refused(change):
    with pytest.raises(ValueError):
        dataclasses.replace(SMALL, **change)
