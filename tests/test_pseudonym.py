"""`screener report --pseudonymize`: keyed, stable pseudonyms for user and message ids in every format, the evidence
redacted, and a clear exit 2 without a usable key."""

from __future__ import annotations

import copy
import csv
import hashlib
import hmac
import io
import json

import duckdb
import pytest
from click.testing import CliRunner

from conftest import AS_OF, KeywordClassifier, generated_rows, write_archive
from conftest_report import sample_data
from screener import pseudonym, report
from screener.cli import main
from screener.errors import ConfigError
from screener.renderers.html_page import anchor_id
from screener.scan import scan
from screener.settings import Settings

KEY = b"0123456789abcdef-test-key"
USER_IDS = ["u-1042", "maria.k", "anon-77", "zed_9"]


def message_ids(data: dict) -> list[str]:
    return [e["message_id"] for u in data["flagged"] for e in u["evidence"]]


def test_a_pseudonym_is_a_prefixed_truncated_hmac_sha256_of_the_prefixed_id():
    expected = "user-" + hmac.new(KEY, b"user-u-1042", hashlib.sha256).hexdigest()[:16]
    assert pseudonym.user_pseudonym("u-1042", KEY) == expected
    assert pseudonym.message_pseudonym("u-1042", KEY) == (
        "msg-" + hmac.new(KEY, b"msg-u-1042", hashlib.sha256).hexdigest()[:16])
    assert pseudonym.user_pseudonym("u-1042", KEY + b"!") != expected


@pytest.mark.parametrize("fmt", ["html", "csv", "json"])
def test_no_user_or_message_id_is_left_in_any_format(fmt):
    data = sample_data()
    before = copy.deepcopy(data)
    shared = report.render(pseudonym.pseudonymize_report(data, KEY), fmt, redact=True).decode()
    assert data == before  # the caller's data is left alone
    for original in USER_IDS + message_ids(data):
        assert original not in shared, original
    for user_id in USER_IDS:
        assert pseudonym.user_pseudonym(user_id, KEY) in shared
    top = pseudonym.message_pseudonym("m-1000", KEY)
    assert top in shared


def test_html_anchors_and_table_cells_carry_the_pseudonym():
    html = report.render(pseudonym.pseudonymize_report(sample_data(), KEY), "html", redact=True).decode()
    alias = pseudonym.user_pseudonym("u-1042", KEY)
    assert f'id="{anchor_id(alias)}"' in html and f'href="#{anchor_id(alias)}"' in html
    assert f'data-v="{alias}"' in html and f'title="{alias}"' in html
    assert "User and message ids are pseudonyms" in html
    assert "pseudonyms" not in report.render(sample_data(), "html").decode()


def test_the_same_id_gets_the_same_pseudonym_in_csv_and_json_and_from_night_to_night():
    first = pseudonym.pseudonymize_report(sample_data(), KEY)
    again = pseudonym.pseudonymize_report(sample_data(), KEY)
    rows = list(csv.DictReader(io.StringIO(report.render(first, "csv").decode())))
    document = json.loads(report.render(again, "json"))
    assert [r["user_id"] for r in rows] == [f["user_id"] for f in document["flagged"]] == [
        pseudonym.user_pseudonym(u, KEY) for u in USER_IDS]
    assert rows[0]["top_evidence_message_id"] == document["flagged"][0]["top_evidence_message_id"]
    assert document["run"]["pseudonymized"] is True


def test_ids_named_in_evidence_text_become_pseudonyms_and_contact_details_are_masked():
    data = sample_data()
    data["flagged"][1]["evidence"][0]["text"] = (
        "ask u-1042 about m-1000, or mail maria.k@example.com; @zed_9 knows, call +44 20 7946 0958 "
        "(u-10420 is someone else)")
    shared = pseudonym.pseudonymize_report(data, KEY)
    text = shared["flagged"][1]["evidence"][0]["text"]
    assert text == (f"ask {pseudonym.user_pseudonym('u-1042', KEY)} about {pseudonym.message_pseudonym('m-1000', KEY)}"
                    ", or mail [email]; @[handle] knows, call [phone] (u-10420 is someone else)")
    html = report.render(shared, "html", redact=True).decode()
    assert pseudonym.user_pseudonym("u-1042", KEY) in html  # a second redaction leaves the pseudonym whole


def test_user_ids_anywhere_in_the_data_are_replaced_as_well():
    data = sample_data()
    data["flagged"][0]["decisions"] = [{"user_id": "u-1042", "note": "spoke to maria.k", "by": "sam"}]
    shared = pseudonym.pseudonymize_report(data, KEY)
    assert shared["flagged"][0]["decisions"] == [{
        "user_id": pseudonym.user_pseudonym("u-1042", KEY),
        "note": f"spoke to {pseudonym.user_pseudonym('maria.k', KEY)}", "by": "sam"}]


@pytest.mark.parametrize("value, message", [(None, "needs a secret key"), ("", "needs a secret key"),
                                            ("short", "at least 16")])
def test_a_missing_or_short_key_is_a_config_error(value, message):
    env = {} if value is None else {pseudonym.KEY_VARIABLE: value}
    with pytest.raises(ConfigError, match=message):
        pseudonym.key_from_env(env)


def test_cli_report_pseudonymize_end_to_end_and_exit_2_without_a_key(tmp_path, monkeypatch):
    db = write_archive(tmp_path / "m.duckdb", generated_rows())
    result = scan(db, Settings(), as_of=AS_OF, classifier=KeywordClassifier(), progress=False)
    con = duckdb.connect(str(db), read_only=True)
    flagged = [u for (u,) in con.execute("SELECT user_id FROM screener_flags").fetchall()]
    con.close()
    assert len(flagged) == result.users_flagged > 0
    runner = CliRunner()
    monkeypatch.delenv(pseudonym.KEY_VARIABLE, raising=False)
    out = tmp_path / "shared.json"
    refused = runner.invoke(main, ["report", str(db), "--pseudonymize", "--format", "json", "-o", str(out)])
    assert refused.exit_code == 2 and pseudonym.KEY_VARIABLE in refused.output and not out.exists()
    monkeypatch.setenv(pseudonym.KEY_VARIABLE, KEY.decode())
    for fmt in ("json", "csv", "html"):
        done = runner.invoke(main, ["report", str(db), "--pseudonymize", "--format", fmt, "-o", "-"])
        assert done.exit_code == 0, done.output
        for u in flagged:
            assert u not in done.stdout and pseudonym.user_pseudonym(u, KEY) in done.stdout
        assert "m000" not in done.stdout
