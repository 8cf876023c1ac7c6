"""Issue 15, item 10: text that shows nothing (whitespace, NUL and other controls, zero-width and other invisible
characters) is blank: recorded as skipped, never given to the model."""

import sys
import unicodedata
from datetime import timedelta

import duckdb
import pytest

from conftest import AS_OF, KeywordClassifier, write_archive
from screener import runs
from screener.scan import scan
from screener.settings import Settings

INVISIBLE = ["\x00", "\x01", "\x1b", "\x7f", "\x85", "\x9b", "\t", "\n", "\r", "\x0b", "\x0c", " ", "\xa0",
             "\u1680", "\u2000", "\u200a", "\u2007", "\u202f", "\u205f", "\u3000", "\u200b", "\u200c", "\u200d",
             "\u200e", "\u200f", "\u2060", "\u2061", "\u2064", "\ufeff", "\u00ad", "\u061c", "\u180e", "\u202a",
             "\u202e", "\u2066", "\u2069", "\u2028", "\u2029", "\U000e0001", "\U000e0041", "\u034f", "\u115f",
             "\u1160", "\u3164", "\uffa0", "\u2800", "\ufe0f", "\U000e0100", "\u180b"]


@pytest.mark.parametrize("ch", INVISIBLE, ids=lambda ch: f"U+{ord(ch):04X}")
def test_text_made_only_of_nul_zero_width_or_other_invisible_characters_is_blank(ch):
    assert runs.is_blank(ch)
    assert runs.is_blank(ch * 50)
    assert runs.is_blank(" ".join(INVISIBLE) + ch)
    assert not runs.is_blank(ch + "bad" + ch)


def test_every_control_format_and_space_character_is_blank_alone():
    for code in range(sys.maxunicode + 1):
        ch = chr(code)
        if unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp"):
            assert runs.is_blank(ch), hex(code)


@pytest.mark.parametrize("text", ["a", ".", "0", "😀", "é", "\u0301e", "日", "\u00a0ok\u200b", "\x00!", "\u3164x"])
def test_one_visible_character_is_not_blank(text):
    assert not runs.is_blank(text)


def test_a_scan_skips_invisible_text_as_empty_and_scores_the_rest(tmp_path):
    texts = {"nul": "\x00\x00\x00", "zwsp": "\u200b\u200b", "bom": "\ufeff \u200d\u2060", "filler": "\u3164",
             "controls": "\x1b\x07\r\n", "real": "bad \u200b news"}
    when = AS_OF - timedelta(hours=1)
    db = write_archive(tmp_path / "m.duckdb", [(mid, "u", when, text) for mid, text in texts.items()])
    seen = []

    class Recording(KeywordClassifier):
        def predict_proba(self, batch):
            seen.extend(batch)
            return super().predict_proba(batch)

    result = scan(db, Settings(), as_of=AS_OF, classifier=Recording(), progress=False)
    assert result.messages_scored == 1 and seen == ["bad \u200b news"]
    assert result.skipped_by_reason.get("empty_text") == 5
    con = duckdb.connect(str(db), read_only=True)
    skipped = {r[0] for r in con.execute("SELECT message_id FROM screener_skipped WHERE reason = 'empty_text'")
               .fetchall()}
    con.close()
    assert skipped == set(texts) - {"real"}
