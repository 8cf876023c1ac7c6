"""The default model and the default flag rule on simulated archives of real messages: the users flagged against the
users the simulator made distressed (``training/simulate.py``).

The seeds are not among those the defaults were chosen or reported on (``benchmarks/flag_thresholds.py``). Each
distinct text goes through the real default model once (``training.distinct``); the scan around it is the one
``screener scan`` runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from conftest import SHARED
from screener import aggregate
from screener.classifiers.registry import load_classifier
from screener.scan import scan
from screener.settings import Settings
from screener.store import Store
from training.distinct import DistinctTexts
from training.simulate import Population, Texts, build, truth_path, write

SMS = SHARED / "data" / "sms" / "SMSSpamCollection.tsv"
# 2,400 users over eight days (the flag window and the day before it), 480 of them distressed: enough that the few
# users more or less that one draw differs by do not decide the test.
POPULATION = Population(ordinary=1920, distressed=480, days=8)


def flags_against_truth(tmp_path: Path, seed: int, population: Population, texts: Texts) -> dict:
    sim = build(seed, population, texts)
    archive = tmp_path / "archive.parquet"
    write(sim, archive)
    assert truth_path(archive).exists()
    db = tmp_path / "results.duckdb"
    with DistinctTexts(load_classifier("default", device="cpu")) as clf:
        result = scan(db, Settings(), source=str(archive), as_of=sim.as_of, classifier=clf, progress=False)
    with Store(db, Settings(), read_only=True) as store:
        flagged = {f["user_id"] for f in aggregate.flags_json(store, result.run_id)}
    caught = flagged & sim.distressed
    return {"flagged": len(flagged), "distressed": len(sim.distressed), "caught": len(caught),
            "precision": len(caught) / len(flagged) if flagged else 0.0,
            "recall": len(caught) / len(sim.distressed), "messages": sim.table.num_rows}


@pytest.mark.slow
def test_default_model_flags_the_distressed_users_of_hand_labelled_messages(tmp_path):
    """Only the committed hand-labelled texts, so it runs wherever the repository does."""
    population = dataclasses.replace(POPULATION, sms_share=0.0)
    got = flags_against_truth(tmp_path, 7, population, Texts.load(sms=None))
    assert got["precision"] >= 0.95 and got["recall"] >= 0.95, got


@pytest.mark.slow
@pytest.mark.skipif(not SMS.exists(), reason="needs ../shared/data/sms/SMSSpamCollection.tsv")
def test_default_model_flags_the_distressed_users_of_messages_with_sms_ham(tmp_path):
    got = flags_against_truth(tmp_path, 8, POPULATION, Texts.load(sms=SMS))
    assert got["precision"] >= 0.95 and got["recall"] >= 0.95, got
