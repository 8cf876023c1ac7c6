"""The demo archive scanned with the shipped default model gives the stored scores, flags and run summary.

``fixtures/demo_expected.json`` was written by ``screener demo`` and ``screener flags --json``; any change to the
scan, the model loading, the windows or the flag rule that moves a score or a flag shows up here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from screener.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = json.loads((Path(__file__).parent / "fixtures" / "demo_expected.json").read_text())
FLAG_KEYS = ("rank", "user_id", "n_messages", "n_negative", "ratio", "wilson_lower", "ratio_long", "ratio_last_n",
             "baseline_ratio", "escalating", "first_flagged")


@pytest.mark.slow
def test_demo_scan_matches_stored_expectation(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["demo", "--dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    for key, value in EXPECTED["run"].items():
        assert run[key] == value, key

    flags = runner.invoke(main, ["flags", str(tmp_path / "messages.duckdb"), "--json"])
    assert flags.exit_code == 0, flags.output
    got = json.loads(flags.stdout)
    assert [f["user_id"] for f in got] == [f["user_id"] for f in EXPECTED["flags"]]
    for g, e in zip(got, EXPECTED["flags"]):
        for key in FLAG_KEYS:
            assert g[key] == pytest.approx(e[key]) if isinstance(e[key], float) else g[key] == e[key], key

    con = duckdb.connect(str(tmp_path / "messages.duckdb"), read_only=True)
    try:
        scores = dict(con.execute("SELECT message_id, p_negative FROM screener_scores").fetchall())
    finally:
        con.close()
    assert scores.keys() == EXPECTED["scores"].keys()
    moved = [m for m, p in EXPECTED["scores"].items() if abs(scores[m] - p) > 1e-3]
    assert not moved, f"{len(moved)} scores moved, e.g. {moved[:5]}"


def test_every_user_the_demo_flags_is_one_the_example_archive_made_distressed():
    """The demo archive is real hand-labelled messages: the users it flags must be those it made distressed."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from build_archive import build
    finally:
        sys.path.pop(0)
    table, distressed = build()
    shipped = pq.read_table(ROOT / "screener" / "demo_data" / "archive.parquet")
    assert table.equals(shipped), "screener/demo_data/archive.parquet is not what examples/build_archive.py builds"
    flagged = {f["user_id"] for f in EXPECTED["flags"]}
    assert flagged and flagged <= distressed
