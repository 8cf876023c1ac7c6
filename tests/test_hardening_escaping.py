"""Issue 15, item 4: human-readable output shows control, format and separator characters as escapes; JSON and CSV
keep every value exact."""

import csv
import io
import json
import logging
import os
import subprocess
import sys
import unicodedata
from datetime import timedelta

import pytest

from conftest import AS_OF, KeywordClassifier, write_archive
from screener.scan import scan
from screener.settings import Settings
from screener.text import VisibleFormatter, visible

HOSTILE_IDS = [
    "esc\x1b[2J\x1b[31mred",                 # CSI: clear screen, colour
    "osc\x1b]0;pwned\x07title",               # OSC: set the window title
    "osc8\x1b]8;;http://evil/\x1b\\link",     # OSC 8 hyperlink, ST-terminated
    "fake\n1\tadmin\t99\t99\t1.000\t0.999\tyes",  # a forged row
    "tab\tcolumn",
    "cr\rover",
    "c1\x9b31mcsi",                           # C1 CSI
    "del\x7fx",
    "bidi\u202eevil\u202c",
    "isolate\u2066x\u2069",
    "line\u2028sep\u2029para",
    "zero\u200bwidth\ufeffbom",
    "nul\x00byte",
]


def screener(*args):
    return subprocess.run([sys.executable, "-m", "screener.cli", *map(str, args)], capture_output=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def hostile_db(tmp_path_factory):
    rows = [(f"{i}-{j}", uid, AS_OF - timedelta(hours=j + 1), "bad") for i, uid in enumerate(HOSTILE_IDS)
            for j in range(5)]
    db = write_archive(tmp_path_factory.mktemp("hostile") / "m.duckdb", rows)
    scan(db, Settings(), as_of=AS_OF, classifier=KeywordClassifier(), progress=False)
    return db


def test_flags_text_output_escapes_control_characters_in_user_ids(hostile_db):
    result = screener("flags", hostile_db)
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode("utf-8")
    lines = text.splitlines()
    # One header and one row per flagged user: a newline or tab in an id forges neither a row nor a column.
    assert len(lines) == 1 + len(HOSTILE_IDS)
    assert all(line.count("\t") == 7 for line in lines)
    assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text if ch not in "\t\n")
    shown = {line.split("\t")[1] for line in lines[1:]}
    assert shown == {visible(uid) for uid in HOSTILE_IDS}
    assert "esc\\x1b[2J\\x1b[31mred" in shown and "bidi\\u202eevil\\u202c" in shown


def test_flags_json_keeps_user_ids_exact(hostile_db):
    result = screener("flags", hostile_db, "--json")
    assert result.returncode == 0
    assert {row["user_id"] for row in json.loads(result.stdout)} == set(HOSTILE_IDS)


def test_csv_report_keeps_user_ids_exact(hostile_db):
    result = screener("report", hostile_db, "--format", "csv", "-o", "-")
    assert result.returncode == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout.decode("utf-8"), newline="")))
    assert {row["user_id"] for row in rows} == set(HOSTILE_IDS)


def test_error_messages_escape_control_characters_in_paths(tmp_path):
    result = screener("flags", tmp_path / "x\x1b]0;pwned\x07\n.duckdb")
    assert result.returncode == 3
    err = result.stderr.decode("utf-8")
    assert "\x1b" not in err and "\x07" not in err
    assert "x\\x1b]0;pwned\\x07\\n.duckdb" in err


def test_log_lines_escape_user_supplied_values():
    formatter = VisibleFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("screener", logging.INFO, __file__, 1, "reading %s", ("a\nFAKE ERROR\x1b[0m",), None)
    assert formatter.format(record) == "INFO reading a\\nFAKE ERROR\\x1b[0m"


def test_visible_escapes_every_control_format_and_separator_character_and_nothing_else():
    for code in range(0x110000):
        ch = chr(code)
        hidden = unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs")
        shown = visible(ch)
        if hidden:
            assert shown.startswith("\\") and shown.isascii() and shown.isprintable(), hex(code)
        else:
            assert shown == ch, hex(code)
    plain = "plain ascii, é, 日本語, 😀 and a \\ backslash"
    assert visible(plain) == plain
    assert visible("\n\r\t\x00\x9b\u202e\U000e0001") == "\\n\\r\\t\\x00\\x9b\\u202e\\U000e0001"
