"""Issue 15, item 7 (signals): SIGTERM and SIGINT during a scan drop the window being scored, let the one being
committed land, record the run as `interrupted` and exit 143 and 130; the next scan loses and doubles nothing."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from conftest import AS_OF, KeywordClassifier, generated_rows, score_counts, write_archive
from screener.errors import Interrupted
from screener.scan import scan
from screener.settings import Settings

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


# The real CLI in a subprocess, its model loader giving a keyword double that takes 20 ms a batch: a scan of a few
# seconds without loading torch, so the signal lands mid-scan.
SLOW_CLI = """
import sys, time
sys.path.insert(0, sys.argv.pop(1))
from conftest import KeywordClassifier
import screener.classifiers.registry as registry

class Slow(KeywordClassifier):
    def predict_proba(self, texts):
        time.sleep(0.02)
        return super().predict_proba(texts)

registry.load_classifier = lambda name, device="auto", **_: Slow()
from screener.cli import main
main(prog_name="screener")
"""
TESTS = str(Path(__file__).resolve().parent)


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-c", SLOW_CLI, TESTS, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=300)


def runs_of(db):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT status, error FROM screener_runs ORDER BY run_id").fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_mid_scan_mark_the_run_interrupted_and_the_rerun_loses_and_doubles_nothing(tmp_path, sig, code):
    rows = generated_rows(n_users=20, per_user=40, seed=5)
    total = len(rows)
    (tmp_path / "screener.toml").write_text("window_rows = 16\nbatch_size = 16\n")
    db = write_archive(tmp_path / "stopped.duckdb", rows)
    clean = write_archive(tmp_path / "clean.duckdb", rows)
    args = ["--as-of", AS_OF.isoformat(), "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, TESTS, "-vv", "scan", db, *args], cwd=tmp_path,
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    committed = 0
    for line in proc.stderr:
        committed += "committed a window" in line
        if committed == 5:
            break
    proc.send_signal(sig)
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode == code, rest[-3000:]
    assert f"stopped by {signal.Signals(sig).name}" in rest
    partial, distinct = score_counts(db)
    assert 0 < partial < total and partial == distinct
    [(status, error)] = runs_of(db)
    assert status == "interrupted" and signal.Signals(sig).name in error

    resumed = cli("scan", db, *args, "--json", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["messages_scored"] == total - partial
    assert score_counts(db) == (total, total)
    assert [status for status, _ in runs_of(db)] == ["interrupted", "completed"]
    assert cli("scan", clean, *args, cwd=tmp_path).returncode == 0
    flags = json.loads(cli("flags", db, "--json", cwd=tmp_path).stdout)
    assert flags == json.loads(cli("flags", clean, "--json", cwd=tmp_path).stdout) and flags


def test_signals_mid_scan_with_the_tiny_model(tmp_path, tiny_model, tiny_threshold):
    rows = generated_rows(n_users=20, per_user=40, seed=5)
    (tmp_path / "screener.toml").write_text(
        f"window_rows = 16\nbatch_size = 16\nnegative_threshold = {tiny_threshold}\n")
    db = write_archive(tmp_path / "stopped.duckdb", rows)
    proc = subprocess.Popen([sys.executable, "-m", "screener.cli", "-vv", "scan", db, "--model", tiny_model,
                             "--as-of", AS_OF.isoformat(), "--no-progress"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "committed a window" in line:
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode == 143, rest[-3000:]
    partial, distinct = score_counts(db)
    assert 0 < partial < len(rows) and partial == distinct
    assert [status for status, _ in runs_of(db)] == ["interrupted"]


class StopsAfter(KeywordClassifier):
    """Raises ``error()`` on its ``calls``-th call, as a signal handler would in the middle of scoring."""

    def __init__(self, calls: int, error) -> None:
        super().__init__()
        self.stop_at, self.error = calls, error

    def predict_proba(self, texts):
        if self.calls + 1 == self.stop_at:
            self.calls += 1
            raise self.error()
        return super().predict_proba(texts)


@pytest.mark.parametrize("error, code", [(KeyboardInterrupt, 130), (lambda: Interrupted(signal.SIGTERM), 143)])
def test_signals_ctrl_c_in_library_use_is_interrupted_not_failed(tmp_path, error, code):
    db = write_archive(tmp_path / "a.duckdb", generated_rows())
    settings = Settings(window_rows=16, batch_size=16)
    with pytest.raises(Interrupted) as stopped:
        scan(db, settings, as_of=AS_OF, classifier=StopsAfter(4, error), progress=False)
    assert stopped.value.exit_code == code
    del stopped  # its traceback holds the scan's DuckDB reader, which keeps the database open
    gc.collect()
    [(status, _)] = runs_of(db)
    assert status == "interrupted"
    n, distinct = score_counts(db)
    # Windows 1 and 2 are committed; window 3 may still have been committing when window 4 stopped the scan.
    assert n == distinct and n in (32, 48)
    rerun = scan(db, settings, as_of=AS_OF, classifier=KeywordClassifier(), progress=False)
    assert rerun.messages_scored == 120 - n and score_counts(db) == (120, 120)


def test_signals_a_run_that_completed_keeps_its_record(tmp_path):
    from screener import runs
    from screener.store import Store

    db = write_archive(tmp_path / "a.duckdb", generated_rows(n_users=2, per_user=3))
    settings = Settings()
    with Store(db, settings) as store:
        src = runs.resolve_source(db, None, settings)
        runs.prepare(store, src)
        run = runs.begin(store, settings, src, "m", "mid", AS_OF, False, 0.0)
        with pytest.raises(Interrupted):
            with runs.guard(store, run):
                runs.complete(store, run, 0)
                raise Interrupted(signal.SIGTERM)  # lands after the completed record was committed
    assert runs_of(db) == [("completed", None)]
