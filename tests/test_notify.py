"""`scan --results-json` and `--notify-command`: the run summary written atomically and handed to a tiny script,
after a scan that finishes, fails or is interrupted; a failing, hanging or missing command changes no exit code."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import AS_OF, KeywordClassifier, generated_rows, write_archive
from screener.cli import main
from screener.errors import ConfigError
from screener.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]

# Writes its stdin to OUT; then exits CODE, or with MODE "hang" starts a child and both sleep, their pids in OUT.pid.
SCRIPT = """\
import os, subprocess, sys, time
out, code, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
data = sys.stdin.buffer.read()
with open(out, "wb") as handle:
    handle.write(data)
if mode == "hang":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open(out + ".pid", "w") as handle:
        handle.write(f"{os.getpid()} {child.pid}")
    time.sleep(120)
print("sent to #support")
sys.exit(code)
"""


@pytest.fixture
def notifier(tmp_path):
    script = tmp_path / "notify.py"
    script.write_text(SCRIPT, encoding="utf-8")

    def command(code: int = 0, mode: str = "ok") -> tuple[str, Path]:
        out = tmp_path / f"payload-{code}-{mode}.json"
        return shlex.join([sys.executable, str(script), str(out), str(code), mode]), out

    return command


@pytest.fixture
def keyword_model(monkeypatch):
    from screener.classifiers import registry

    monkeypatch.setattr(registry, "load_classifier", lambda *args, **kwargs: KeywordClassifier())


def scan_args(db, *extra):
    return ["scan", str(db), "--as-of", AS_OF.isoformat(), "--no-progress", *map(str, extra)]


def test_a_finished_scan_writes_the_summary_and_hands_the_same_to_the_command(tmp_path, notifier, keyword_model,
                                                                              caplog):
    caplog.set_level("INFO")
    db = write_archive(tmp_path / "m.duckdb", generated_rows())
    command, payload = notifier()
    summary_file = tmp_path / "run.json"
    result = CliRunner().invoke(main, scan_args(db, "--json", "--results-json", summary_file,
                                                "--notify-command", command))
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    written = json.loads(summary_file.read_text())
    assert written == {"status": "completed", "exit_code": 0, **printed}
    assert (printed["run_id"], printed["messages_scored"], printed["users"]) == (1, 120, 12)
    assert payload.read_bytes() == summary_file.read_bytes()
    assert oct(summary_file.stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert "sent to #support" in caplog.text


def test_a_failed_scan_reports_status_error_and_exit_code_and_keeps_its_exit_code(tmp_path, notifier):
    db = tmp_path / "wrong.duckdb"
    import duckdb

    duckdb.connect(str(db)).execute("CREATE TABLE other (x INTEGER)").close()
    command, payload = notifier()
    summary_file = tmp_path / "run.json"
    result = CliRunner().invoke(main, scan_args(db, "--results-json", summary_file, "--notify-command", command))
    assert result.exit_code == 3, result.output
    written = json.loads(summary_file.read_text())
    assert (written["status"], written["exit_code"]) == ("failed", 3)
    assert "no table 'messages'" in written["error"]
    assert json.loads(payload.read_text()) == written


def test_a_missing_archive_and_a_bad_model_are_reported_with_their_exit_codes(tmp_path, notifier, monkeypatch):
    command, payload = notifier()
    missing = CliRunner().invoke(main, scan_args(tmp_path / "nope.duckdb", "--notify-command", command))
    assert missing.exit_code == 1
    assert json.loads(payload.read_text())["error"].endswith("expected a DuckDB file with a messages table")
    db = write_archive(tmp_path / "m.duckdb", generated_rows())
    model = CliRunner().invoke(main, scan_args(db, "--model", "no-such-model", "--notify-command", command))
    assert model.exit_code == 5
    assert (json.loads(payload.read_text())["exit_code"], json.loads(payload.read_text())["status"]) == (5, "failed")


def test_a_failing_notify_command_is_logged_and_the_exit_code_stays_0(tmp_path, notifier, keyword_model, caplog):
    db = write_archive(tmp_path / "m.duckdb", generated_rows())
    command, payload = notifier(code=9)
    result = CliRunner().invoke(main, scan_args(db, "--notify-command", command))
    assert result.exit_code == 0, result.output
    assert json.loads(payload.read_text())["status"] == "completed"
    assert "exited with 9: sent to #support" in caplog.text


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_hanging_notify_command_is_killed_with_its_children_after_the_timeout(tmp_path, notifier, keyword_model,
                                                                                 caplog):
    db = write_archive(tmp_path / "m.duckdb", generated_rows())
    command, payload = notifier(mode="hang")
    started = time.monotonic()
    result = CliRunner().invoke(main, scan_args(db, "--notify-command", command, "--notify-timeout", "2"))
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 60
    assert "did not finish within 2 seconds and was killed" in caplog.text
    pids = [int(p) for p in Path(str(payload) + ".pid").read_text().split()]
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)


def test_a_notify_command_that_does_not_exist_is_logged(tmp_path, keyword_model, caplog):
    db = write_archive(tmp_path / "m.duckdb", generated_rows())
    result = CliRunner().invoke(main, scan_args(db, "--notify-command", str(tmp_path / "no-such-sender")))
    assert result.exit_code == 0, result.output
    assert "could not be started" in caplog.text


@pytest.mark.parametrize("value", ["", "notify 'unbalanced"])
def test_an_empty_or_unparsable_notify_command_is_a_usage_error(tmp_path, value):
    result = CliRunner().invoke(main, scan_args(tmp_path / "m.duckdb", "--notify-command", value))
    assert result.exit_code == 2 and "--notify-command" in result.output


@pytest.mark.parametrize("raise_it, status, code", [
    (lambda: (_ for _ in ()).throw(KeyboardInterrupt()), "interrupted", 130),
    (lambda: os.kill(os.getpid(), signal.SIGTERM) or time.sleep(30), "interrupted", 143),
    (lambda: (_ for _ in ()).throw(RuntimeError("boom")), "failed", 1),
])
def test_an_interrupted_or_crashed_scan_is_reported(tmp_path, notifier, monkeypatch, raise_it, status, code):
    import screener.scan

    monkeypatch.setattr(screener.scan, "scan", lambda *args, **kwargs: raise_it())
    db = write_archive(tmp_path / "m.duckdb", generated_rows())
    command, payload = notifier()
    summary_file = tmp_path / "run.json"
    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(main, scan_args(db, "--results-json", summary_file, "--notify-command", command))
    assert result.exit_code == code, result.output
    written = json.loads(summary_file.read_text())
    assert (written["status"], written["exit_code"]) == (status, code)
    assert json.loads(payload.read_text()) == written
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_summary_file_that_cannot_be_written_fails_a_finished_scan_with_7(tmp_path, notifier, keyword_model):
    db = write_archive(tmp_path / "m.duckdb", generated_rows())
    command, payload = notifier()
    result = CliRunner().invoke(main, scan_args(db, "--results-json", tmp_path / "no-dir" / "run.json",
                                                "--notify-command", command))
    assert result.exit_code == 7 and "could not write the run summary" in result.output
    sent = json.loads(payload.read_text())
    assert (sent["status"], sent["exit_code"], sent["run_id"]) == ("failed", 7, 1)


def test_a_summary_path_that_is_the_archive_fails_the_scan_before_it_starts(tmp_path, notifier, keyword_model):
    db = write_archive(tmp_path / "m.duckdb", generated_rows())
    before = db.read_bytes()
    command, payload = notifier()
    result = CliRunner().invoke(main, scan_args(db, "--results-json", db, "--notify-command", command))
    assert result.exit_code == 2 and "refusing to write" in result.output
    assert db.read_bytes() == before
    sent = json.loads(payload.read_text())
    assert (sent["status"], sent["exit_code"]) == ("failed", 2) and "run_id" not in sent


def test_the_notify_timeout_is_a_setting_with_a_range(tmp_path):
    assert Settings().notify_timeout_seconds == 60.0
    for bad in (0.5, 3601.0):
        with pytest.raises(ConfigError, match="notify_timeout_seconds must be between 1 and 3600"):
            Settings(notify_timeout_seconds=bad)
    config = tmp_path / "screener.toml"
    config.write_text("[notify]\nnotify_timeout_seconds = 5\n", encoding="utf-8")
    assert load_settings(config).notify_timeout_seconds == 5.0
    result = CliRunner().invoke(main, scan_args(tmp_path / "m.duckdb", "--notify-timeout", "0"))
    assert result.exit_code == 2


def test_a_sigterm_before_the_scan_proper_is_reported_as_interrupted(tmp_path, notifier, monkeypatch):
    import screener.cli

    def settings_then_sigterm(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)

    monkeypatch.setattr(screener.cli, "build_settings", settings_then_sigterm)
    db = write_archive(tmp_path / "m.duckdb", generated_rows())
    command, payload = notifier()
    summary_file = tmp_path / "run.json"
    result = CliRunner().invoke(main, scan_args(db, "--results-json", summary_file, "--notify-command", command))
    assert result.exit_code == 143, result.output
    assert (json.loads(summary_file.read_text())["status"], json.loads(payload.read_text())["exit_code"]) == (
        "interrupted", 143)


def test_end_to_end_in_a_subprocess_with_a_tiny_model(tmp_path, notifier, tiny_model, tiny_threshold):
    db = write_archive(tmp_path / "m.duckdb", generated_rows())
    command, payload = notifier()
    summary_file = tmp_path / "run.json"
    proc = subprocess.run(
        [sys.executable, "-m", "screener.cli", *scan_args(db, "--model", tiny_model, "--threshold", tiny_threshold,
                                                          "--results-json", summary_file, "--notify-command", command)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    written = json.loads(summary_file.read_text())
    assert (written["status"], written["messages_scored"], written["model_name"]) == ("completed", 120,
                                                                                       "tiny-random")
    assert json.loads(payload.read_text()) == written
