"""The report in a real headless Chromium: hostile data stays text, nothing runs, nothing is fetched, and the
report's own script (pinned by the CSP) sorts the table.

Needs Debian's ``chromium`` (or another binary in $SCREENER_CHROMIUM) and the ``playwright`` Python package, which
drives it over CDP with its bundled driver; no browser download is involved."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest_report import HOSTILE, empty_data, hostile_data, regroup, sample_data

from screener import report
from screener.renderers import html_page



def html_of(data: dict) -> str:
    return report.render(data, "html").decode("utf-8")


CHROMIUM = os.environ.get("SCREENER_CHROMIUM", "/usr/bin/chromium")
if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(
        f"no Chromium at {CHROMIUM}: install Debian's 'chromium' package or set SCREENER_CHROMIUM",
        allow_module_level=True,
    )
pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api", reason="the 'playwright' Python package is not installed")

# Playwright adds --headless and a fresh temporary --user-data-dir itself (and deletes it afterwards).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]

# Runs before any page script; CDP-injected, so the page's CSP does not apply to it.
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__violations.push(e.violatedDirective + " " + e.blockedURI);
});
"""


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, chromium_sandbox=False, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


class Visit:
    """One page load, with every request the page attempted, those that reached the network layer (the route
    handler; a request the CSP blocks is attempted but never routed), and every error it logged."""

    def __init__(self, browser, path: Path):
        self.url = path.as_uri()
        self.requests: list[str] = []
        self.routed: list[str] = []
        self.blocked: list[tuple[str, str | None]] = []
        self.errors: list[str] = []
        self.context = browser.new_context(viewport={"width": 1200, "height": 900})
        self.context.add_init_script(RECORD_VIOLATIONS)
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("requestfailed", lambda request: self.blocked.append((request.url, request.failure)))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", lambda msg: msg.type == "error" and self.errors.append(msg.text))
        self.page.goto(self.url, wait_until="load")

    def _route(self, route):
        # Nothing may leave the machine; the report file itself is the only thing served.
        self.routed.append(route.request.url)
        if route.request.url == self.url:
            route.continue_()
        else:
            route.abort()

    @property
    def outside_requests(self) -> list[str]:
        return [url for url in self.requests if url != self.url]

    @property
    def outside_routed(self) -> list[str]:
        return [url for url in self.routed if url != self.url]

    def js(self, expression: str):
        return self.page.evaluate(expression)

    def close(self):
        self.context.close()


@pytest.fixture
def visit(browser, tmp_path):
    visits = []

    def open_report(html: str, name: str = "report.html") -> Visit:
        path = tmp_path / name
        path.write_text(html, encoding="utf-8")
        visits.append(Visit(browser, path))
        return visits[-1]

    yield open_report
    for v in visits:
        v.close()


def _user_column(v: Visit, table: str = "table.flagged-table") -> list[str]:
    """The user column of the given tables' rows, in page order."""
    return v.js(f"Array.from(document.querySelectorAll('{table} tbody tr')).map(r => r.cells[1].innerText)")


def one_group(data: dict, state: str = "returning") -> dict:
    for user in data["flagged"]:
        user["state"] = state
    return regroup(data)


def test_hostile_strings_render_as_text_and_nothing_runs_or_loads(visit):
    v = visit(html_of(hostile_data()))
    v.page.wait_for_timeout(300)  # room for an onerror/onload handler or a meta refresh to fire
    assert v.js("typeof window.__pwned") == "undefined"
    assert v.js("typeof parent.__pwned") == "undefined"
    assert v.page.title() == "Screener report – run 3 – 2026-11-29 06:00 UTC"
    assert v.page.url == v.url
    assert v.outside_requests == []
    assert v.js("window.__violations") == []
    assert v.errors == []
    counts = v.js(
        "['script','img','iframe','base','link','object','embed','form','meta[http-equiv=refresh]','style']"
        ".map(s => document.querySelectorAll(s).length)"
    )
    assert counts == [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert v.js("Array.from(document.querySelectorAll('*')).flatMap(e => e.getAttributeNames())"
                ".filter(n => n.startsWith('on'))") == []
    assert v.js("Array.from(document.querySelectorAll('a')).map(a => a.getAttribute('href'))"
                ".filter(h => !h.startsWith('#'))") == []
    body = v.js("document.body.innerText")
    for payload in HOSTILE:
        assert payload in body
    assert "<script>window.__pwned='model'</script>{{ 7*7 }}" in body
    # The new users (ranks 2 and 4), then the returning ones (ranks 1 and 3).
    assert _user_column(v) == [HOSTILE[1], HOSTILE[11], HOSTILE[0], HOSTILE[3]]
    history = v.js("Array.from(document.querySelectorAll('aside.history')).map(a => a.innerText).join('\\n')")
    for payload in HOSTILE:
        assert payload in history


def test_clicking_headers_sorts_the_table_under_the_csp(visit):
    v = visit(html_of(one_group(sample_data())))
    assert _user_column(v) == ["u-1042", "maria.k", "anon-77", "zed_9"]

    v.page.click("#table-returning th >> text=User")
    assert _user_column(v) == ["anon-77", "maria.k", "u-1042", "zed_9"]
    v.page.click("#table-returning th >> text=User")
    assert _user_column(v) == ["zed_9", "u-1042", "maria.k", "anon-77"]
    assert v.js("Array.from(document.querySelectorAll('#table-returning th')).map(t => t.getAttribute('aria-sort'))"
                ".filter(s => s !== 'none')") == ["descending"]

    v.page.click("#table-returning th >> text=30d share")  # 0.42, 0.47, 0.71, 0.30: highest first
    assert _user_column(v) == ["anon-77", "maria.k", "u-1042", "zed_9"]
    v.page.click("#table-returning th >> text=Rank")
    assert _user_column(v) == ["u-1042", "maria.k", "anon-77", "zed_9"]

    # The pinned stylesheet applied too (the page background is the CSS's --wash colour).
    assert v.js("getComputedStyle(document.body).backgroundColor") == "rgb(245, 247, 250)"
    assert v.js("window.__violations") == []
    assert v.errors == [] and v.outside_requests == []


def test_groups_new_and_escalated_first_handled_and_snoozed_collapsed_each_table_sorting_alone(visit):
    data = sample_data()
    for user, state in zip(data["flagged"], ["handled", "escalated", "snoozed", "new"]):
        user["state"] = state
    v = visit(html_of(regroup(data)))
    groups = v.js("Array.from(document.querySelectorAll('.group')).map(g => [g.id, g.tagName, !!g.open])")
    assert groups == [["group-new", "DIV", False], ["group-escalated", "DIV", False],
                      ["group-handled", "DETAILS", False], ["group-snoozed", "DETAILS", False]]
    card = v.page.locator("#" + html_page.anchor_id("u-1042"))
    assert not card.is_visible()
    v.page.click("#group-handled summary")
    assert card.is_visible()
    assert "contacted" in card.locator("aside.history").inner_text()
    assert "Called, said it was a bad week." in card.locator("aside.history").inner_text()
    assert v.js("getComputedStyle(document.querySelector('.card-main')).display") == "grid"
    v.page.click("#table-escalated th >> text=User")
    assert _user_column(v, "#table-escalated") == ["maria.k"]
    assert v.js("document.querySelector('#table-new th').getAttribute('aria-sort')") == "ascending"
    assert v.errors == [] and v.js("window.__violations") == [] and v.outside_requests == []


def test_empty_report_loads_without_errors(visit):
    v = visit(html_of(empty_data()))
    assert "Nobody was flagged in this run" in v.js("document.body.innerText")
    assert v.errors == [] and v.js("window.__violations") == [] and v.outside_requests == []


def test_csp_would_stop_markup_that_slipped_past_escaping(visit):
    # Checks the harness as much as the policy: the same injection without the CSP is seen to run and to fetch.
    injected = '<script>window.__pwned = "injected"</script><img src="http://127.0.0.1:9/leak.png"></body>'
    guarded = html_of(sample_data()).replace("</body>", injected)
    v = visit(guarded, "guarded.html")
    assert v.js("typeof window.__pwned") == "undefined"
    assert sorted(d.split()[0] for d in v.js("window.__violations")) == ["img-src", "script-src-elem"]
    assert v.blocked == [("http://127.0.0.1:9/leak.png", "csp")]
    assert v.outside_routed == []

    unguarded = guarded.replace('http-equiv="Content-Security-Policy"', 'name="csp-removed"')
    u = visit(unguarded, "unguarded.html")
    assert u.js("window.__pwned") == "injected"
    assert u.outside_routed == ["http://127.0.0.1:9/leak.png"]
