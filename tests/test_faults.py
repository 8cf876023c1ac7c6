"""Faults a nightly run meets: SIGKILL at random moments, the disk filling up mid-run."""

import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta

import duckdb

from conftest import AS_OF, generated_rows, score_counts, write_archive

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def cli(*args, cwd, **kw):
    return subprocess.run([sys.executable, "-m", "screener.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=ENV, **kw)


def latest_flags(db):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(
            "SELECT user_id, rank, n_messages, n_negative, ratio, wilson_lower, escalating FROM screener_flags "
            "WHERE run_id = (SELECT max(run_id) FROM screener_runs WHERE status = 'completed') ORDER BY rank"
        ).fetchall()
    finally:
        con.close()


def test_twenty_seeded_sigkills_across_reading_scoring_and_writing(tmp_path, tiny_model, tiny_threshold):
    """Each trial kills a scan at a seeded moment: during start-up and reading (before any commit), after the
    k-th committed window (mid-scoring or mid-write), or during aggregation; then reruns it. Every message ends
    with exactly one score and the flags equal an uninterrupted run's."""
    rows = generated_rows(n_users=30, per_user=40, seed=11)
    window = 48
    n_windows = -(-len(rows) // window)
    (tmp_path / "screener.toml").write_text(
        f"window_rows = {window}\nbatch_size = 16\nnegative_threshold = {tiny_threshold}\n")
    args = ["--model", tiny_model, "--as-of", AS_OF.isoformat(), "--no-progress"]
    clean = write_archive(tmp_path / "clean.duckdb", rows)
    assert cli("scan", clean, *args, cwd=tmp_path).returncode == 0
    want = latest_flags(clean)
    assert want
    template = tmp_path / "template.duckdb"
    write_archive(template, rows)
    rng = random.Random(20261129)
    landed = {"before_first_commit": 0, "mid_scan": 0, "after_scoring": 0}
    for trial in range(20):
        db = tmp_path / f"trial{trial}.duckdb"
        shutil.copy(template, db)
        # The first trial is killed during start-up and reading, the last once scoring has finished (in
        # aggregation or just after it), the others after a seeded number of committed windows.
        after_windows = 0 if trial == 0 else None if trial == 19 else rng.randint(1, n_windows - 1)
        proc = subprocess.Popen([sys.executable, "-m", "screener.cli", "-vv", "scan", db, *args], cwd=tmp_path,
                                env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if after_windows == 0:
            time.sleep(rng.uniform(0.2, 1.0))
        elif after_windows is None:
            for line in proc.stderr:
                if "messages in" in line:
                    break
        else:
            seen = 0
            for line in proc.stderr:
                seen += "committed a window" in line
                if seen == after_windows:
                    break
            time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        n, distinct = score_counts(db) if _has_scores_table(db) else (0, 0)
        assert n == distinct
        landed["before_first_commit" if n == 0 else "mid_scan" if n < len(rows) else "after_scoring"] += 1
        rerun = cli("scan", db, *args, cwd=tmp_path)
        assert rerun.returncode == 0, rerun.stderr
        assert score_counts(db) == (len(rows), len(rows))
        assert latest_flags(db) == want
        db.unlink()
    assert landed["before_first_commit"] >= 1 and landed["mid_scan"] >= 10 and landed["after_scoring"] >= 1, landed


def _has_scores_table(db):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return bool(con.execute("SELECT count(*) FROM information_schema.tables "
                                "WHERE table_name = 'screener_scores'").fetchone()[0])
    finally:
        con.close()


def _limit_file_size(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_mid_run_is_a_clear_error_and_earlier_results_survive(tmp_path, tiny_model):
    db = write_archive(tmp_path / "m.duckdb", generated_rows(n_users=4, per_user=10))
    args = ["--model", tiny_model, "--as-of", AS_OF.isoformat(), "--no-progress"]
    assert cli("scan", db, *args, cwd=tmp_path).returncode == 0
    before = score_counts(db)
    con = duckdb.connect(str(db))
    big = "bad news " * 2000
    con.executemany("INSERT INTO messages VALUES (?, ?, ?, ?)",
                    [(f"x{i}", "u01", AS_OF - timedelta(minutes=i + 1), big + str(i)) for i in range(3000)])
    con.close()
    # No file may grow past 64 KiB: the write-ahead log of the new scores fills that up mid-run.
    proc = subprocess.run([sys.executable, "-m", "screener.cli", "scan", str(db), *args], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, preexec_fn=_limit_file_size(64 * 1024))
    assert proc.returncode == 7, proc.stderr
    assert "Earlier results are intact" in proc.stderr
    after, distinct = score_counts(db)
    assert after == distinct and after >= before[0]
    rerun = cli("scan", db, *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert score_counts(db) == (before[0] + 3000, before[0] + 3000)
