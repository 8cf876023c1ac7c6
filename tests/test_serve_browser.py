"""The served review page (`screener serve`) in a real headless Chromium: decisions recorded through the page, the
access token, CSRF and Origin checks, hostile user ids and texts, and nothing fetched from elsewhere.

The server runs as a real `screener serve` subprocess on a free loopback port. Needs Debian's ``chromium`` (or
$SCREENER_CHROMIUM), the ``playwright`` package and the serve extra (starlette, uvicorn)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import duckdb
import pytest

from conftest import AS_OF, KeywordClassifier, write_archive
from screener.renderers import html_page
from screener.scan import scan
from screener.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("SCREENER_CHROMIUM", "/usr/bin/chromium")
if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's 'chromium' package or set SCREENER_CHROMIUM",
                allow_module_level=True)
pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api", reason="the 'playwright' Python package is not installed")
pytest.importorskip("starlette", reason="the serve extra (starlette, uvicorn) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (starlette, uvicorn) is not installed")

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__violations.push(e.violatedDirective + " " + e.blockedURI);
});
"""

HOSTILE_IDS = [
    "<img src=x onerror=\"window.__pwned='img'\">",
    "\"><script>window.__pwned='attr'</script><p x=\"",
    "line\nbreak 'single' \"double\" & amp",
    "</textarea></form><script>window.__pwned='close'</script>",
]
HOSTILE_NOTE = "<script>window.__pwned='note'</script>\n\"quoted\" 'single' {{ 7*7 }}"
USERS = ["ann", "bob", *HOSTILE_IDS]


def _rows() -> list[tuple]:
    rows = []
    for u, user in enumerate(USERS):
        for i in range(6):
            text = f"bad {HOSTILE_IDS[i % len(HOSTILE_IDS)]}" if user in HOSTILE_IDS else "bad day"
            rows.append((f"m{u}-{i}", user, AS_OF.replace(hour=i + 1), text))
    return rows


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A results database whose run flags every user of USERS, served by `screener serve --port 0`."""
    folder = tmp_path_factory.mktemp("serve")
    db = write_archive(folder / "a.duckdb", _rows())
    result = scan(db, Settings(), as_of=AS_OF, classifier=KeywordClassifier(), progress=False)
    assert result.users_flagged == len(USERS)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SCREENER_SERVE_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "screener.cli", "serve", str(db), "--port", "0", "--by", "rev"],
                            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("screener serve: "), (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split(" at ")[1].strip()
        parts = urlsplit(url)
        yield {"db": db, "url": url, "base": f"{parts.scheme}://{parts.netloc}/", "token": parts.query[6:]}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def decisions_in(db: Path) -> list[tuple]:
    # The server opens the database only while it answers a request, so a test can read it in between.
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT user_id, action, reviewer, note, snooze_until IS NOT NULL FROM screener_decisions "
                           "ORDER BY id").fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, chromium_sandbox=False,
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Session:
    """A browser context that opened the printed URL, with every request it made and every error it logged."""

    def __init__(self, browser, served):
        self.base = served["base"]
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.context = browser.new_context(viewport={"width": 1200, "height": 900})
        self.context.add_init_script(RECORD_VIOLATIONS)
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", lambda msg: msg.type == "error" and self.errors.append(msg.text))
        self.page.goto(served["url"], wait_until="load")

    def _route(self, route):
        self.requests.append(route.request.url)
        if route.request.url.startswith(self.base):
            route.continue_()
        else:
            route.abort()

    @property
    def outside(self) -> list[str]:
        return [url for url in self.requests if not url.startswith(self.base)]

    def card(self, user_id: str):
        return self.page.locator(f"#{html_page.anchor_id(user_id)}")

    def js(self, expression: str):
        return self.page.evaluate(expression)

    def close(self):
        self.context.close()


@pytest.fixture
def session(browser, served):
    sessions = []

    def open_session() -> Session:
        sessions.append(Session(browser, served))
        return sessions[-1]

    yield open_session
    for s in sessions:
        s.close()


def status_of(url: str, data: bytes | None = None, headers: dict | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_token_is_swapped_for_a_cookie_and_leaves_the_address_bar(session, served):
    s = session()
    assert s.page.url == served["base"]
    cookies = {c["name"]: c for c in s.context.cookies()}
    assert cookies["screener_session"]["httpOnly"] and cookies["screener_session"]["sameSite"] == "Strict"
    assert s.js("document.cookie") == ""
    assert "Live review page" in s.js("document.body.innerText")
    assert s.js("window.__violations") == [] and s.errors == [] and s.outside == []


def test_a_request_without_the_token_gets_403(served):
    base = served["base"]
    assert status_of(base) == 403
    assert status_of(base + "?token=wrong-token") == 403
    assert status_of(base + "decide") == 403
    assert status_of(base + "anything/else") == 403
    assert status_of(base, headers={"Cookie": "screener_session=forged.0123"}) == 403
    assert status_of(base + "decide", data=b"action=contacted", headers={"Origin": base.rstrip("/")}) == 403
    assert status_of(base, headers={"X-Screener-Token": served["token"]}) == 200


def test_record_a_decision_through_the_page_reload_and_see_it_and_its_history(session, served):
    before = len(decisions_in(served["db"]))
    s = session()
    card = s.card("ann")
    card.locator("textarea[name=note]").fill("Called her, doing better.\nWill check next week.")
    with s.page.expect_navigation(url=f"{served['base']}?page=1#{html_page.anchor_id('ann')}"):
        card.locator("button[value=contacted]").click()
    assert decisions_in(served["db"])[before:] == [
        ("ann", "contacted", "rev", "Called her, doing better.\nWill check next week.", False)]

    # The redirect names ann's card, and the browser opens the collapsed group that holds it.
    s.page.reload(wait_until="load")
    assert s.page.locator("details#group-handled").evaluate("d => d.open")
    history = s.card("ann").locator("aside.history").inner_text()
    assert "contacted" in history and "rev" in history
    assert "Called her, doing better.\nWill check next week." in history
    assert "handled" in s.card("ann").locator("h2").inner_text()
    # Loaded plainly, the handled group starts collapsed.
    s.page.goto(served["base"], wait_until="load")
    handled = s.page.locator("details#group-handled")
    assert not handled.evaluate("d => d.open") and not s.card("ann").is_visible()
    handled.locator("summary").click()
    assert s.card("ann").is_visible()

    # A snooze with its date, through the same form.
    bob = s.card("bob")
    bob.locator("input[name=until]").fill("2030-01-01")
    with s.page.expect_navigation():
        bob.locator("button[value=snooze]").click()
    assert decisions_in(served["db"])[-1] == ("bob", "snooze", "rev", None, True)
    assert "until 2030-01-01 00:00 UTC" in s.card("bob").locator("aside.history").inner_text()
    assert s.js("window.__violations") == [] and s.errors == [] and s.outside == []


def test_a_write_without_the_csrf_token_or_from_another_origin_gets_403(session, served):
    s = session()
    card = s.card(HOSTILE_IDS[0])
    csrf = card.locator("input[name=csrf]").input_value()
    user = card.locator("input[name=user]").input_value()
    assert user == HOSTILE_IDS[0].encode().hex() and len(csrf) == 64
    before = decisions_in(served["db"])
    origin = served["base"].rstrip("/")
    form = {"user": user, "page": "1", "action": "no-action", "by": "rev"}

    def post(fields: dict, headers: dict) -> int:
        return s.context.request.post(served["base"] + "decide", form=fields, headers=headers,
                                      max_redirects=0).status

    assert post(form, {"Origin": origin}) == 403
    assert post({**form, "csrf": "0" * 64}, {"Origin": origin}) == 403
    assert post({**form, "csrf": csrf}, {"Origin": "http://evil.example"}) == 403
    assert post({**form, "csrf": csrf}, {}) == 403
    assert decisions_in(served["db"]) == before
    assert post({**form, "csrf": csrf}, {"Origin": origin}) == 303  # the same write, with both, is taken
    assert decisions_in(served["db"])[len(before):] == [(HOSTILE_IDS[0], "no-action", "rev", None, False)]

    # A form on another site that posts here: the SameSite=Strict cookie stays home.
    before = decisions_in(served["db"])
    attack = s.context.new_page()
    attack.route("http://attacker.test/**", lambda route: route.fulfill(content_type="text/html", body=(
        f'<form method="post" action="{served["base"]}decide"><input name="csrf" value="{csrf}">'
        f'<input name="user" value="{user}"><input name="page" value="1"><input name="by" value="x">'
        '<button name="action" value="escalated">go</button></form>')))
    attack.goto("http://attacker.test/page")
    with attack.expect_navigation():
        attack.click("button")
    assert attack.inner_text("body").startswith("403 forbidden: open the URL")  # no session: no cookie came
    assert decisions_in(served["db"]) == before


def test_hostile_user_ids_and_texts_stay_inert_and_round_trip_exactly(session, served):
    s = session()
    s.page.wait_for_timeout(300)
    assert s.js("typeof window.__pwned") == "undefined"
    counts = s.js("['script','img','iframe','base','link','object','embed','meta[http-equiv=refresh]','style']"
                  ".map(q => document.querySelectorAll(q).length)")
    assert counts == [1, 0, 0, 0, 0, 0, 0, 0, 1]
    assert s.js("Array.from(document.querySelectorAll('*')).flatMap(e => e.getAttributeNames())"
                ".filter(n => n.startsWith('on'))") == []
    assert s.js("Array.from(document.querySelectorAll('form')).map(f => f.getAttribute('action'))"
                ".filter(a => a !== '/decide')") == []
    body = s.js("document.body.innerText")
    for user_id in HOSTILE_IDS:
        assert " ".join(user_id.split()) in " ".join(body.split())

    target = HOSTILE_IDS[2]  # a newline, quotes and an ampersand
    card = s.card(target)
    card.locator("textarea[name=note]").fill(HOSTILE_NOTE)
    card.locator("input[name=by]").fill("<b>rev</b> \"x\"")
    with s.page.expect_navigation():
        card.locator("button[value=escalated]").click()
    assert decisions_in(served["db"])[-1] == (target, "escalated", "<b>rev</b> \"x\"", HOSTILE_NOTE, False)

    s.page.reload(wait_until="load")
    s.page.wait_for_timeout(300)
    history = s.card(target).locator("aside.history").inner_text()
    assert HOSTILE_NOTE in history and "<b>rev</b> \"x\"" in history
    assert s.js("typeof window.__pwned") == "undefined"
    assert s.js("document.querySelectorAll('script').length") == 1
    assert s.js("window.__violations") == [] and s.errors == [] and s.outside == []
