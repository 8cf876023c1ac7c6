"""The demo archive scanned with the shipped default model gives the stored scores, flags and run summary, and its
flags are exactly the users the example archive made distressed.

``fixtures/demo_expected.json`` is written by ``screener demo --json`` and ``screener flags --json`` (the run keys
of ``RUN_KEYS``, every flag, each message's P(negative) to four places); any change to the scan, the model loading,
the windows or the flag rule that moves a score or a flag shows up here. Where such a change is meant, write it
again from the repository root with ``python tests/test_demo_expected.py`` and review the difference.

The scans here run the default with ONNX Runtime in fp32 (``--backend onnx-fp32``), whose scores differ between
CPUs by far less than the 1e-3 checked. ``auto`` runs the default at int8, whose scores differ between CPUs with
and without VNNI (AVX2's int8 products can saturate) and with the batch parts a batch is cut into; int8's agreement
with torch, the demo flags included, is ``benchmarks/onnx_agreement.py``'s. The scans still run on two threads (``OMP_NUM_THREADS``), whatever the
machine's core count.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from screener.cli import main

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "demo_expected.json"
EXPECTED = json.loads(FIXTURE.read_text())
RUN_KEYS = ("as_of", "messages_scored", "messages_skipped", "messages_total", "model_id", "model_name", "rescored",
            "run_id", "skipped_by_reason", "users", "users_flagged")
MODEL_THREADS = "2"
BACKEND = "onnx-fp32"
FLAG_KEYS = ("rank", "user_id", "n_messages", "n_negative", "ratio", "wilson_lower", "ratio_long", "ratio_last_n",
             "baseline_ratio", "escalating", "first_flagged")


def demo_distressed() -> set[str]:
    """The users ``examples/build_archive.py`` makes distressed; the shipped archive must be what it builds."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from build_archive import build
    finally:
        sys.path.pop(0)
    table, distressed = build()
    shipped = pq.read_table(ROOT / "screener" / "demo_data" / "archive.parquet")
    assert table.equals(shipped), "screener/demo_data/archive.parquet is not what examples/build_archive.py builds"
    return distressed


def scan_demo(directory: Path) -> tuple[dict, list[dict], dict[str, float]]:
    """The demo's run summary, its flags and every message's P(negative), as the CLI gives them."""
    runner = CliRunner()
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = MODEL_THREADS
    try:
        result = runner.invoke(main, ["demo", "--dir", str(directory), "--backend", BACKEND, "--json"])
    finally:
        if threads is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = threads
    assert result.exit_code == 0, result.output
    flags = runner.invoke(main, ["flags", str(directory / "messages.duckdb"), "--json"])
    assert flags.exit_code == 0, flags.output
    con = duckdb.connect(str(directory / "messages.duckdb"), read_only=True)
    try:
        scores = dict(con.execute("SELECT message_id, p_negative FROM screener_scores").fetchall())
    finally:
        con.close()
    return json.loads(result.stdout), json.loads(flags.stdout), scores


@pytest.mark.slow
def test_demo_scan_matches_stored_expectation_and_flags_exactly_the_distressed_users(tmp_path):
    run, got, scores = scan_demo(tmp_path)
    for key in RUN_KEYS:
        assert run[key] == EXPECTED["run"][key], key
    assert [f["user_id"] for f in got] == [f["user_id"] for f in EXPECTED["flags"]]
    for g, e in zip(got, EXPECTED["flags"]):
        for key in FLAG_KEYS:
            assert g[key] == pytest.approx(e[key]) if isinstance(e[key], float) else g[key] == e[key], key
    assert {f["user_id"] for f in got} == demo_distressed()

    assert scores.keys() == EXPECTED["scores"].keys()
    moved = [m for m, p in EXPECTED["scores"].items() if abs(scores[m] - p) > 1e-3]
    assert not moved, f"{len(moved)} scores moved, e.g. {moved[:5]}"


def test_the_stored_demo_flags_are_exactly_the_users_the_example_archive_made_distressed():
    """The demo archive is real hand-labelled messages: it flags every user it made distressed, and no other."""
    assert {f["user_id"] for f in EXPECTED["flags"]} == demo_distressed()
    assert EXPECTED["run"]["users_flagged"] == len(demo_distressed())


def write_fixture() -> None:
    with tempfile.TemporaryDirectory() as directory:
        run, got, scores = scan_demo(Path(directory))
    expected = {"flags": got, "run": {key: run[key] for key in RUN_KEYS},
                "scores": {m: round(p, 4) for m, p in sorted(scores.items())}}
    FIXTURE.write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {FIXTURE}: {run['users_flagged']} flagged of {run['users']} users")


if __name__ == "__main__":
    write_fixture()
