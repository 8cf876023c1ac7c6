"""The report without a browser: structure, escaping, CSP, formats, redaction and how the file is written."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import re
import stat
from html.parser import HTMLParser

import jinja2
import pytest
from conftest_report import HOSTILE, empty_data, hostile_data, sample_data

from screener import report
from screener.errors import ConfigError, StorageError
from screener.renderers import RENDERERS, html_page, redaction, rows as report_rows

def render(data: dict, fmt: str = "html", redact: bool = False) -> str:
    content = report.render(data, fmt, redact=redact)
    assert isinstance(content, bytes)
    return content.decode("utf-8")


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Page(HTMLParser):
    """Collects elements, attributes, text and raw script/style bodies, and fails on mis-nested tags."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.elements: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.raw: dict[str, list[str]] = {"script": [], "style": []}
        self.feed(html)
        self.close()
        assert self.stack == [], f"unclosed elements: {self.stack}"

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag in self.raw:
            self.raw[tag].append("")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]} "
        self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] in self.raw:
            self.raw[self.stack[-1]][-1] += data
        else:
            self.text.append(data)

    def all(self, tag: str) -> list[dict]:
        return [attrs for name, attrs in self.elements if name == tag]

    @property
    def visible_text(self) -> str:
        return "".join(self.text)

    @property
    def words(self) -> str:
        """The text with runs of whitespace collapsed, as a browser shows it outside pre-formatted blocks."""
        return " ".join(self.visible_text.split())


def _sha256(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


def _csp(page: Page) -> dict[str, str]:
    [meta] = [a for a in page.all("meta") if a.get("http-equiv", "").lower() == "content-security-policy"]
    directives = {}
    for part in meta["content"].split(";"):
        name, _, value = part.strip().partition(" ")
        directives[name] = value
    return directives


def test_sample_report_parses_with_every_element_closed_and_one_section_per_user():
    page = Page(render(sample_data()))
    sections = [a for a in page.all("section") if "user-card" in a.get("class", "")]
    assert len(sections) == 4
    assert len(page.all("tr")) == 2 + 4  # a table for the new users and one for the returning ones
    assert len(page.all("svg")) == 4


def test_script_tags_in_message_text_user_ids_and_model_name_are_escaped():
    html = render(hostile_data())
    page = Page(html)
    assert len(page.raw["script"]) == 1 and "__pwned" not in page.raw["script"][0]
    assert len(page.raw["style"]) == 1 and "__pwned" not in page.raw["style"][0]
    assert "<script>window.__pwned" not in html
    assert "&lt;script&gt;window.__pwned=&#39;script&#39;" in html
    for payload in HOSTILE:
        assert payload in page.visible_text
    assert "<script>window.__pwned='model'</script>{{ 7*7 }}" in page.visible_text
    for tag in ("img", "iframe", "base", "link", "a"):
        for attrs in page.all(tag):
            assert tag == "a" and attrs["href"].startswith("#"), (tag, attrs)
    handlers = [(tag, name) for tag, attrs in page.elements for name in attrs if name.startswith("on")]
    assert handlers == []


def test_template_syntax_in_data_is_shown_not_evaluated():
    data = sample_data()
    data["flagged"][0]["user_id"] = "{{ 7*7 }}"
    data["flagged"][0]["evidence"][0]["text"] = "{% for x in range(3) %}loop{% endfor %} {{ config }}"
    page = Page(render(data))
    assert "{{ 7*7 }}" in page.visible_text
    assert "{% for x in range(3) %}loop{% endfor %} {{ config }}" in page.visible_text
    assert "looplooploop" not in page.visible_text


def test_no_resource_is_referenced_outside_the_page():
    html = render(sample_data())
    page = Page(html)
    assert "http://" not in html and "https://" not in html
    assert "url(" not in page.raw["style"][0]
    for tag, attrs in page.elements:
        assert "src" not in attrs and "srcset" not in attrs and "style" not in attrs, (tag, attrs)
        if "href" in attrs:
            assert attrs["href"].startswith("#"), (tag, attrs)
        if "xlink:href" in attrs or "action" in attrs or "formaction" in attrs:
            pytest.fail(f"{tag} carries a reference: {attrs}")
        for value in attrs.values():
            assert value is None or "//" not in value or tag == "meta", (tag, attrs)


def test_csp_pins_exactly_the_inline_script_and_style_by_hash():
    html = render(sample_data())
    page = Page(html)
    csp = _csp(page)
    assert csp == {
        "default-src": "'none'",
        "script-src": _sha256(page.raw["script"][0]),
        "style-src": _sha256(page.raw["style"][0]),
        "img-src": "data:",
        "base-uri": "'none'",
        "form-action": "'none'",
    }
    assert html.index("Content-Security-Policy") < html.index("<style>") < html.index("<script>")


def test_missing_key_in_data_raises_instead_of_rendering_blank():
    data = sample_data()
    del data["run"]["users_seen"]
    with pytest.raises(jinja2.UndefinedError, match="users_seen"):
        render(data)


def test_nobody_flagged_shows_the_empty_state_and_no_table():
    page = Page(render(empty_data()))
    assert "Nobody was flagged in this run" in page.visible_text
    assert page.all("table") == []
    assert not [a for a in page.all("section") if "user-card" in a.get("class", "")]


def test_table_links_point_to_user_sections_by_hash_of_the_user_id():
    data = sample_data()
    data["flagged"][1]["user_id"] = '" onmouseover="x'
    page = Page(render(data))
    links = [a["href"] for a in page.all("a") if a["href"] != "#flagged-users"]
    section_ids = [a["id"] for a in page.all("section") if "user-card" in a.get("class", "")]
    assert links == ["#" + i for i in section_ids]
    assert section_ids[0] == "u-" + hashlib.sha256(b'" onmouseover="x').hexdigest()[:16]
    assert len(set(section_ids)) == 4


def test_chart_leaves_gaps_for_days_without_messages_and_stubs_for_days_with_none_negative():
    data = sample_data()
    data["flagged"] = data["flagged"][:1]
    data["flagged"][0]["daily"] = [
        {"day": "2026-11-26", "n": 0, "neg": 0, "ratio": None},
        {"day": "2026-11-27", "n": 2, "neg": 0, "ratio": 0.0},
        {"day": "2026-11-28", "n": 4, "neg": 3, "ratio": 0.75},
        {"day": "2026-11-29", "n": 2, "neg": 1, "ratio": 0.5},
    ]
    page = Page(render(data))
    rects = {a["class"]: a for a in page.all("rect")}
    bars = [a["class"] for a in page.all("rect") if a["class"].startswith("bar-")]
    assert bars == ["bar-zero", "bar-hi", "bar-lo"]
    # Plot is 110 units high: 75% -> 82.5, 50% -> 55; the stub is 1.5 so "none negative" differs from "no data".
    assert float(rects["bar-hi"]["height"]) == 82.5
    assert float(rects["bar-lo"]["height"]) == 55.0
    assert float(rects["bar-zero"]["height"]) == 1.5
    assert len([a for a in page.all("rect") if a["class"] == "vol"]) == 3
    [threshold] = [a for a in page.all("line") if a.get("class") == "threshold"]
    assert float(threshold["y1"]) == 16 + 110 * (1 - 0.6)
    assert "2026-11-26: no messages" in page.visible_text
    assert "2026-11-28: 3 of 4 negative (75%)" in page.visible_text


def test_summary_states_rules_confidence_and_skips():
    data = sample_data()
    data["settings"]["confidence_z"] = 2.576
    text = Page(render(data)).words
    assert ("high_negative_share: At least 5 messages in the last 7 days, with a negative share of at least 0.6."
            in text)
    assert "P(negative) ≥ 0.5" in text
    assert "99% Wilson interval of their 7-day share" in text
    assert "empty text: 2" in text and "null user id: 1" in text
    assert "ab12cd34ef56" in text


def test_each_card_names_the_rule_and_its_reason():
    data = sample_data()
    data["flagged"][1]["rule"] = "other_rule"
    data["flagged"][2]["reason"] = None
    page = Page(render(data))
    text = page.words
    assert ("high_negative_share: 21 of 24 messages in the last 7 days negative (88%), threshold 60% with at least 5 "
            "messages. With 95% confidence the user's true 7-day share is at least 69%, against 12% over the user's "
            "own 30-day baseline, a sharp rise.") in text
    assert "other_rule: 10 of 12 messages" in text
    assert "high_negative_share: no reason was recorded for this flag." in text
    rule_names = [text for text in page.text if text in ("high_negative_share", "other_rule")]
    # The rule list, then one card per user: the new users maria.k and zed_9, then the returning u-1042, anon-77.
    assert rule_names == ["high_negative_share", "other_rule", "high_negative_share", "high_negative_share",
                          "high_negative_share"]


def test_control_characters_are_made_visible_and_huge_messages_shortened():
    data = sample_data()
    evidence = data["flagged"][0]["evidence"]
    evidence[0]["text"] = "bell\x07escape\x1b[31mred"
    evidence[1]["text"] = "H" * 3000 + "T" * 3000
    text = Page(render(data)).visible_text
    assert "bell\ufffdescape\ufffd[31mred" in text
    half = html_page.EVIDENCE_MAX_CHARS // 2
    assert "H" * half + " … [4800 characters omitted] … " + "T" * half in text
    assert "H" * (half + 1) not in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail me at john.doe+x@example.co.uk.", "mail me at [email]."),
        ("see https://example.com/a?b=1, ok", "see [url], ok"),
        ("go to www.evil.org/path now", "go to [url] now"),
        ("ping @bob_smith and @ann.lee.", "ping @[handle] and @[handle]."),
        ("call +44 20 7946 0958 now", "call [phone] now"),
        ("call (555) 123-4567 or 555.123.4567", "call [phone] or [phone]"),
        ("user@host.com http://a@b.com/x @x", "[email] [url] @[handle]"),
        ("ftp://files.example.net/a.txt; 0044 20 7946 0958", "[url]; [phone]"),
        ("javascript:alert(document.cookie) and data:text/html,xx", "[url]) and [url]"),
        # Left alone: dates, times, prices, decimals, short numbers, things that are not addresses.
        ("on 2026-11-29 at 10:30 I paid 12.50; pi is 3.14159265", "on 2026-11-29 at 10:30 I paid 12.50; pi is 3.14159265"),
        ("order 12345 of 3 items", "order 12345 of 3 items"),
        ("x@y and foo@bar", "x@y and foo@bar"),
        ("already [email], @[handle], [url], [phone]", "already [email], @[handle], [url], [phone]"),
    ],
)
def test_redact(text, expected):
    assert redaction.redact(text) == expected


def test_redact_stays_linear_on_inputs_that_make_backtracking_patterns_explode():
    # A naive phone pattern needs 2**n steps on n digits followed by a letter; 5000 would never finish.
    assert redaction.redact("1" * 5000 + "a") == "1" * 5000 + "a"
    assert redaction.redact("1-" * 5000 + "x") == "1-" * 5000 + "x"
    assert redaction.redact("a." * 5000 + "@") == "a." * 5000 + "@"


def test_redacted_html_masks_evidence_but_keeps_user_ids():
    data = sample_data()
    data["flagged"][0]["user_id"] = "bob@example.com"
    data["flagged"][0]["evidence"][0]["text"] = "write to bob@example.com or call 555-123-4567"
    plain = Page(render(data)).visible_text
    masked = Page(render(data, redact=True)).visible_text
    assert "write to bob@example.com or call 555-123-4567" in plain
    assert "write to [email] or call [phone]" in masked
    assert "bob@example.com" in masked  # the user id: staff need it to reach out
    assert "555-123-4567" not in masked


def test_redaction_happens_before_a_huge_message_is_shortened():
    data = sample_data()
    data["flagged"][0]["evidence"][0]["text"] = "x" * 590 + " https://example.com/" + "secret/" * 200 + " end"
    text = Page(render(data, redact=True)).visible_text
    assert "secret" not in text and "x" * 590 + " [url] end" in text


def test_csv_has_one_row_per_user_with_hand_checked_values():
    data = sample_data()
    data["flagged"][0]["evidence"][2]["p_negative"] = 0.999
    rows = list(csv.DictReader(io.StringIO(render(data, "csv"))))
    assert [r["user_id"] for r in rows] == ["u-1042", "maria.k", "anon-77", "zed_9"]
    assert rows[0] == {
        "rank": "1", "user_id": "u-1042", "n_messages": "24", "n_negative": "21", "ratio": "0.875",
        "wilson_lower": "0.69", "ratio_30d": "0.42", "ratio_last_n": "0.85", "baseline_ratio": "0.12",
        "escalating": "true", "first_flagged": "2026-11-25", "top_evidence_message_id": "m-1002",
        "top_evidence_p_negative": "0.999", "rule": "high_negative_share",
        "reason": "21 of 24 messages in the last 7 days negative (88%), threshold 60% with at least 5 messages",
        "state": "returning",
    }
    assert rows[3]["baseline_ratio"] == "" and rows[3]["escalating"] == "false"


def test_csv_cells_that_a_spreadsheet_would_evaluate_get_an_apostrophe():
    data = sample_data()
    ids = ["=HYPERLINK(\"http://x\")", "+1-2", "-3+4", "@SUM(A1)"]
    for user, user_id in zip(data["flagged"], ids):
        user["user_id"] = user_id
    data["flagged"][0]["evidence"][0]["message_id"] = "=cmd|' /C calc'!A0"
    data["flagged"][1]["evidence"][0]["message_id"] = "\t=1"
    rows = list(csv.DictReader(io.StringIO(render(data, "csv"))))
    assert [r["user_id"] for r in rows] == ["'" + i for i in ids]
    assert rows[0]["top_evidence_message_id"] == "'=cmd|' /C calc'!A0"
    assert rows[1]["top_evidence_message_id"] == "'\t=1"
    assert rows[0]["ratio"] == "0.875"


def test_empty_csv_still_has_its_header():
    text = render(empty_data(), "csv")
    assert text.splitlines() == [",".join(report_rows.row_keys(30))]


def test_json_round_trips_run_settings_and_rows():
    data = hostile_data()
    text = render(data, "json")
    assert "<" not in text and ">" not in text
    document = json.loads(text)
    assert set(document) == {"run", "settings", "flagged"}
    assert document["run"] == data["run"]
    assert document["settings"] == data["settings"]
    assert document["flagged"] == report_rows.flagged_rows(data)
    assert document["flagged"][0]["user_id"] == HOSTILE[0]
    assert document["flagged"][3]["baseline_ratio"] is None


def test_unknown_format_is_a_config_error():
    with pytest.raises(ConfigError, match="expected one of html, csv, json"):
        render(sample_data(), "pdf")


def test_every_format_renders_bytes_and_the_cli_offers_exactly_the_registered_ones():
    from screener.cli import main

    assert report.FORMATS == ("html", "csv", "json") == tuple(RENDERERS)
    for fmt in report.FORMATS:
        assert isinstance(report.render(sample_data(), fmt), bytes)
    [fmt_option] = [p for p in main.commands["report"].params if p.name == "fmt"]
    assert tuple(fmt_option.type.choices) == report.FORMATS


@pytest.mark.parametrize("fmt", ["html", "csv", "json"])
def test_report_file_is_private_even_with_a_permissive_umask(tmp_path, fmt):
    target = tmp_path / f"report.{fmt}"
    target.write_text("old")
    target.chmod(0o644)
    previous = os.umask(0)
    try:
        written = report.write_report(sample_data(), target, fmt)
    finally:
        os.umask(previous)
    assert written == target
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_bytes() == report.render(sample_data(), fmt)
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_failed_render_leaves_the_previous_report_in_place(tmp_path):
    target = tmp_path / "report.html"
    target.write_text("yesterday")
    data = sample_data()
    del data["settings"]["min_ratio"]
    with pytest.raises((KeyError, jinja2.UndefinedError)):
        report.write_report(data, target)
    assert target.read_text() == "yesterday"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_unwritable_destination_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError, match=re.escape(str(tmp_path / "missing"))):
        report.write_report(sample_data(), tmp_path / "missing" / "report.html")


def test_each_card_shows_the_users_decisions_beside_the_chart_and_redacts_their_notes():
    data = sample_data()
    data["flagged"][0]["decisions"].insert(0, {
        "id": 2, "action": "snooze", "note": "mail bob@example.com\nafter the holidays", "reviewer": "kim\x07",
        "decided_at": "2026-11-28T09:00:00+00:00", "run_id": 2, "snooze_until": "2026-12-05T00:00:00+00:00"})
    page = Page(render(data))
    asides = [a for a in page.all("aside") if a.get("class") == "history"]
    assert len(asides) == 4
    text = page.words
    assert ("snooze 2026-11-28 09:00 UTC · kim\ufffd · until 2026-12-05 00:00 UTC mail bob@example.com after the "
            "holidays contacted 2026-11-01 10:30 UTC · sam Called, said it was a bad week.") in text
    assert text.count("No decision yet.") == 3
    assert "mail [email]" in Page(render(data, redact=True)).words
    assert page.all("form") == []


def test_groups_follow_the_state_order_with_handled_and_snoozed_collapsed():
    data = sample_data()
    for user, state in zip(data["flagged"], ["snoozed", "handled", "escalated", "new"]):
        user["state"] = state
    data["groups"] = [{"state": s, "count": 1, "collapsed": s in ("handled", "snoozed")}
                      for s in ("new", "escalated", "handled", "snoozed")]
    html = render(data)
    page = Page(html)
    assert [a["id"] for a in page.all("details")] == ["group-handled", "group-snoozed"]
    order = [html.index(f'id="group-{s}"') for s in ("new", "escalated", "handled", "snoozed")]
    assert order == sorted(order)
    assert [a["id"] for a in page.all("table")] == ["table-new", "table-escalated", "table-handled", "table-snoozed"]
    badges = [a["class"] for a in page.all("span") if a.get("class", "").startswith("badge state-")]
    assert badges == ["badge state-new", "badge state-escalated", "badge state-handled", "badge state-snoozed"]


def test_a_page_whose_group_lies_on_other_pages_says_so():
    data = sample_data()
    data["groups"].append({"state": "handled", "count": 7, "collapsed": True})
    data["page"] = {"number": 1, "size": 4, "pages": 3, "total": 11}
    assert "All 7 on other pages." in Page(render(data)).words


def test_the_served_page_has_a_form_per_user_posting_to_its_own_origin_only():
    data = hostile_data()
    data["page"] = {"number": 2, "size": 4, "pages": 3, "total": 11}
    html = html_page.render_page(data, False, review={"csrf": "c" * 64, "reviewer": "<b>sam</b>",
                                                      "first_snooze_day": "2026-11-30"}).decode()
    page = Page(html)
    forms = page.all("form")
    assert [(f["method"], f["action"]) for f in forms] == [("post", "/decide")] * 4
    hidden = [a for a in page.all("input") if a.get("type") == "hidden"]
    assert {a["value"] for a in hidden if a["name"] == "csrf"} == {"c" * 64}
    assert {a["value"] for a in hidden if a["name"] == "page"} == {"2"}
    users = [html_page.user_from_key(a["value"]) for a in hidden if a["name"] == "user"]
    assert sorted(users) == sorted(u["user_id"] for u in data["flagged"])
    assert {a["value"] for a in page.all("input") if a.get("name") == "by"} == {"<b>sam</b>"}
    buttons = [a["value"] for a in page.all("button") if a.get("name") == "action"]
    assert buttons == ["contacted", "no-action", "false-positive", "escalated", "snooze"] * 4
    assert [a["href"] for a in page.all("a") if not a["href"].startswith("#")] == ["/?page=1", "/?page=3"]
    assert _csp(page)["form-action"] == "'self'"
    assert _csp(page)["script-src"] == _sha256(page.raw["script"][0])
    assert html_page.page_policy("'self'") == [a for a in page.all("meta") if a.get("http-equiv")][0]["content"]
    for tag, attrs in page.elements:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)


@pytest.mark.parametrize("user_id", ["u-1", "line\nbreak\r\n", "<script>\"'&", "\ud800 lone", "名前 🙂"])
def test_a_form_names_a_user_by_hex_that_comes_back_exactly(user_id):
    key = html_page.user_key(user_id)
    assert re.fullmatch("[0-9a-f]*", key)
    assert html_page.user_from_key(key) == user_id
    with pytest.raises(ValueError):
        html_page.user_from_key("zz")
