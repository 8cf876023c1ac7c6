"""The review server's checks without a browser, through Starlette's test client: the token exchange, forged
cookies, the CSRF token, Origin and Sec-Fetch-Site, malformed and oversized forms, and the response headers.
tests/test_serve_browser.py drives the real server in Chromium."""

from __future__ import annotations

import subprocess
import sys
import warnings

import duckdb
import pytest

from conftest import AS_OF, KeywordClassifier, generated_rows, write_archive
from screener.errors import ConfigError
from screener.renderers import html_page
from screener.scan import scan
from screener.settings import Settings

pytest.importorskip("starlette", reason="the serve extra (starlette, uvicorn) is not installed")
pytest.importorskip("httpx", reason="Starlette's test client needs httpx")
with warnings.catch_warnings():
    # Starlette 1.x would rather drive its test client with httpx2; the pinned environment has httpx.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient  # noqa: E402

from screener import serve  # noqa: E402

TOKEN = "test-token-0123456789abcdef"
ORIGIN = "http://testserver"


@pytest.fixture
def db(tmp_path):
    path = write_archive(tmp_path / "a.duckdb", generated_rows())
    scan(path, Settings(), as_of=AS_OF, classifier=KeywordClassifier(), progress=False)
    return path


@pytest.fixture
def client(db):
    app = serve.create_app(db, TOKEN, "rev", Settings(serve_page_size=2))
    with TestClient(app, follow_redirects=False) as test_client:
        yield test_client


def logged_in(client) -> str:
    """Swap the token for a session cookie; the session's CSRF token, as the page's forms carry it."""
    response = client.get(f"/?token={TOKEN}")
    assert response.status_code == 303
    page = client.get("/")
    assert page.status_code == 200
    marker = 'name="csrf" value="'
    start = page.text.index(marker) + len(marker)
    return page.text[start:start + 64]


def decision_count(db) -> int:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM screener_decisions").fetchone()[0]
    finally:
        con.close()


def form(csrf: str, **fields) -> dict:
    return {"csrf": csrf, "user": html_page.user_key("u00"), "page": "1", "action": "contacted", "by": "rev",
            **fields}


def test_the_token_becomes_a_strict_http_only_cookie_and_leaves_the_url(client):
    response = client.get(f"/?page=2&token={TOKEN}")
    assert response.status_code == 303 and response.headers["location"] == "/?page=2"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("screener_session=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert client.get("/?page=2").status_code == 200


def test_forged_or_foreign_cookies_and_wrong_tokens_get_403(client, db):
    assert client.get("/").status_code == 403
    assert client.get("/?token=nope").status_code == 403
    assert client.get("/", headers={"X-Screener-Token": "nope"}).status_code == 403
    for cookie in ("x", "a.b", "abc." + "0" * 64, "a.b.c"):
        client.cookies.set("screener_session", cookie)
        assert client.get("/").status_code == 403
    foreign = serve.Keys("another-token-0123456789").new_session_cookie()
    client.cookies.set("screener_session", foreign)
    assert client.get("/").status_code == 403
    client.cookies.clear()
    assert client.get("/", headers={"X-Screener-Token": TOKEN}).status_code == 200


def test_every_response_carries_the_policy_and_the_protective_headers(client):
    for response in (client.get("/"), client.get("/", headers={"X-Screener-Token": TOKEN})):
        headers = response.headers
        assert headers["content-security-policy"] == html_page.page_policy("'self'") + "; frame-ancestors 'none'"
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "same-origin" and headers["cache-control"] == "no-store"


def test_a_write_needs_the_sessions_csrf_token_and_this_origin(client, db):
    csrf = logged_in(client)
    cases = [
        (form(""), {"Origin": ORIGIN}),
        (form("f" * 64), {"Origin": ORIGIN}),
        (form(csrf), {}),
        (form(csrf), {"Origin": "http://evil.example"}),
        (form(csrf), {"Origin": "null"}),
        (form(csrf), {"Origin": ORIGIN, "Sec-Fetch-Site": "cross-site"}),
    ]
    for fields, headers in cases:
        assert client.post("/decide", data=fields, headers=headers).status_code == 403, (fields, headers)
    header_only = TestClient(client.app, follow_redirects=False)
    assert header_only.post("/decide", data=form(csrf), headers={"Origin": ORIGIN, "X-Screener-Token": TOKEN}
                            ).status_code == 403  # a token header has no session, so no CSRF token matches
    assert decision_count(db) == 0
    response = client.post("/decide", data=form(csrf), headers={"Origin": ORIGIN})
    assert response.status_code == 303
    assert response.headers["location"] == f"/?page=1#{html_page.anchor_id('u00')}"
    assert decision_count(db) == 1


def test_bad_forms_are_refused_without_writing(client, db):
    csrf = logged_in(client)
    headers = {"Origin": ORIGIN, "Content-Type": "application/x-www-form-urlencoded"}
    checks = [
        (f"csrf={csrf}&csrf={csrf}&user=7530&action=contacted&page=1", 400, "URL-encoded"),
        (f"csrf={csrf}&user=zz&action=contacted&page=1", 400, "names no user"),
        (f"csrf={csrf}&user=7530&action=contacted&page=x", 400, "names no user or page"),
        (f"csrf={csrf}&user=7530&action=called&page=1&by=rev", 400, "unknown action 'called'"),
        (f"csrf={csrf}&user={html_page.user_key('nobody')}&action=contacted&page=1&by=rev", 400, "no user"),
        (f"csrf={csrf}&user=7530&action=snooze&page=1&by=rev", 400, "a snooze needs"),
        (f"csrf={csrf}&user=7530&action=snooze&until=2020-01-01&page=1&by=rev", 400, "is not after"),
        (f"csrf={csrf}&user=7530&action=contacted&page=1&by=", 400, "reviewer name"),
        (b"csrf=\xff", 400, "UTF-8"),
        ("x=" + "a" * (serve.MAX_FORM_BYTES + 1), 413, "too large"),
    ]
    for body, status, text in checks:
        response = client.post("/decide", content=body, headers=headers)
        assert (response.status_code, text in response.text) == (status, True), (body[:80], response.text)
    assert decision_count(db) == 0
    assert client.get("/decide").status_code == 405
    assert client.get("/?page=abc").status_code == 400
    assert client.get("/?page=999").status_code == 200  # past the end: the last page


def test_pages_and_the_snooze_field_only_counts_for_a_snooze(client, db):
    csrf = logged_in(client)
    response = client.post("/decide", data=form(csrf, until="2030-01-01"), headers={"Origin": ORIGIN})
    assert response.status_code == 303
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT action, snooze_until FROM screener_decisions").fetchall() == [("contacted", None)]
    con.close()
    page = client.get("/?page=2").text
    assert "Page 2 of 2: 4 flagged users, 2 a page." in " ".join(page.split())


def test_a_short_token_from_the_environment_is_refused(monkeypatch):
    monkeypatch.setenv(serve.TOKEN_ENV, "short")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        serve.access_token()
    monkeypatch.setenv(serve.TOKEN_ENV, "x" * 16)
    assert serve.access_token() == ("x" * 16, False)
    monkeypatch.delenv(serve.TOKEN_ENV)
    token, generated = serve.access_token()
    assert generated and len(token) >= 40


def test_while_a_scan_holds_the_database_the_page_and_writes_answer_503_and_change_nothing(client, db):
    csrf = logged_in(client)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True);"
         " time.sleep(60)", str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        page = client.get("/")
        assert page.status_code == 503 and "busy" in page.text
        write = client.post("/decide", data=form(csrf), headers={"Origin": ORIGIN})
        assert write.status_code == 503 and "not recorded" in write.text
    finally:
        holder.kill()
        holder.wait()
    assert decision_count(db) == 0
    assert client.get("/").status_code == 200
