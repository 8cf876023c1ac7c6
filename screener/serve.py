"""The served review page (``screener serve``): the latest run's report, live, with a form per user whose buttons
record decisions through :func:`screener.decisions.record`. A Starlette app run by uvicorn.

The page quotes private messages and its forms write to the results database, so every request is checked:

- The server listens on loopback unless told otherwise.
- Access: a random token printed at start (or ``SCREENER_SERVE_TOKEN``). The first load carries it as
  ``?token=``; the server answers with a session cookie (HttpOnly, SameSite=Strict) and a redirect to the same page
  without the token. Scripts may send it in an ``X-Screener-Token`` header instead. Any other request gets 403.
- The session cookie is ``<id>.<MAC>``, keyed by a secret derived from the token, so it cannot be forged and a
  restart with the same token keeps it valid.
- Writes (``POST /decide``) need the session's CSRF token (a MAC of the session id) in the form, an ``Origin``
  header naming this server, and no ``Sec-Fetch-Site`` other than same-origin; else 403. Each accepted write
  appends exactly one decision row.
- Every response carries the page's Content-Security-Policy (its one script and stylesheet pinned by hash, forms
  only to this origin, nothing loaded from anywhere), ``frame-ancestors 'none'``, ``nosniff``, a same-origin
  referrer policy and no caching. uvicorn's access log is off: it would write the first request's token to the log.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import socket
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from screener import aggregate, decisions
from screener.errors import AlreadyRunningError, ConfigError, InputError, ReviewError, ScreenerError
from screener.renderers import html_page
from screener.runs import open_run
from screener.settings import Settings
from screener.states import SNOOZE_ACTION
from screener.store import Store

log = logging.getLogger(__name__)

TOKEN_ENV = "SCREENER_SERVE_TOKEN"
TOKEN_HEADER = "x-screener-token"
SESSION_COOKIE = "screener_session"
MIN_TOKEN_CHARS = 16
MAX_FORM_BYTES = 64 * 1024
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class Keys:
    """The access token and the secrets derived from it: session cookies and CSRF tokens."""

    def __init__(self, token: str) -> None:
        self.token = token
        self._key = hashlib.sha256(b"screener-serve-session:" + token.encode("utf-8")).digest()

    def _mac(self, purpose: str, session: str) -> str:
        return hmac.new(self._key, f"{purpose}:{session}".encode(), hashlib.sha256).hexdigest()

    def token_ok(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), self.token.encode())

    def new_session_cookie(self) -> str:
        session = secrets.token_urlsafe(18)
        return f"{session}.{self._mac('session', session)}"

    def session_of(self, cookie: str | None) -> str | None:
        """The session id of a cookie this server issued, else None."""
        if not cookie or cookie.count(".") != 1:
            return None
        session, mac = cookie.split(".")
        return session if hmac.compare_digest(mac.encode(), self._mac("session", session).encode()) else None

    def csrf(self, session: str | None) -> str:
        return self._mac("csrf", session) if session else ""

    def csrf_ok(self, session: str | None, candidate: str | None) -> bool:
        return bool(session) and candidate is not None and hmac.compare_digest(
            candidate.encode(), self.csrf(session).encode())


def _security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = html_page.page_policy("'self'") + "; frame-ancestors 'none'"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    # Not no-referrer: under it a browser sends the page's forms with Origin: null, and the Origin check needs it.
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def _refused(reason: str) -> Response:
    return _security_headers(PlainTextResponse(f"403 forbidden: {reason}\n", status_code=403))


class AccessCheck(BaseHTTPMiddleware):
    """Lets through requests with a valid session cookie or token header; exchanges a ``?token=`` for a cookie."""

    def __init__(self, app, keys: Keys) -> None:
        super().__init__(app)
        self.keys = keys

    async def dispatch(self, request: Request, call_next) -> Response:
        query_token = request.query_params.get("token")
        if query_token is not None:
            if not self.keys.token_ok(query_token):
                return _refused("wrong access token")
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(SESSION_COOKIE, self.keys.new_session_cookie(), httponly=True, samesite="strict",
                                path="/")
            return _security_headers(response)
        session = self.keys.session_of(request.cookies.get(SESSION_COOKIE))
        if session is None and not self.keys.token_ok(request.headers.get(TOKEN_HEADER)):
            return _refused("open the URL `screener serve` printed, with its ?token=")
        request.state.session = session
        return _security_headers(await call_next(request))


class Reviewer:
    """The page and the decision endpoint over one results database. In one process DuckDB refuses a read-only and
    a writing connection to the same file at once, so the requests take turns; each opens the database only for as
    long as it needs it, so the nightly scan can run between them."""

    def __init__(self, db: Path, keys: Keys, reviewer: str, settings: Settings) -> None:
        self.db = db
        self.keys = keys
        self.reviewer = reviewer
        self.settings = settings
        self.lock = threading.Lock()

    def _render(self, number: int, session: str | None) -> bytes:
        with self.lock:
            with open_run(self.db, settings=self.settings) as run:
                data = aggregate.report_data(run.store, run.run_id, page=number,
                                             page_size=self.settings.serve_page_size)
        tomorrow = datetime.now(timezone.utc).date() + timedelta(days=1)
        return html_page.render_page(data, False, review={
            "csrf": self.keys.csrf(session), "reviewer": self.reviewer, "first_snooze_day": tomorrow.isoformat()})

    async def page(self, request: Request) -> Response:
        number = _page_number(request.query_params.get("page", "1"))
        if number is None:
            return PlainTextResponse("400 bad request: ?page= must be a page number\n", status_code=400)
        try:
            body = await run_in_threadpool(self._render, number, request.state.session)
        except AlreadyRunningError as exc:
            return PlainTextResponse(f"503 busy: {exc}\n", status_code=503)
        except ScreenerError as exc:
            return PlainTextResponse(f"503 unavailable: {exc}\n", status_code=503)
        return Response(body, media_type="text/html; charset=utf-8")

    def _record(self, user_id: str, action: str, note: str | None, reviewer: str, until: str | None) -> None:
        with self.lock:
            decisions.record(self.db, user_id, action, note=note, reviewer=reviewer,
                             until=decisions.parse_until(until) if until else None)

    async def decide(self, request: Request) -> Response:
        expected_origin = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if request.headers.get("origin") != expected_origin:
            return _refused("a write must come from this page (Origin)")
        if request.headers.get("sec-fetch-site", "same-origin") != "same-origin":
            return _refused("a write must come from this page (Sec-Fetch-Site)")
        body = await _body(request, MAX_FORM_BYTES)
        if body is None:
            return PlainTextResponse("413 the form is too large\n", status_code=413)
        form = _form(body)
        if form is None:
            return PlainTextResponse("400 bad request: expected a URL-encoded UTF-8 form\n", status_code=400)
        if not self.keys.csrf_ok(request.state.session, form.get("csrf")):
            return _refused("the form's CSRF token does not match this session; reload the page")
        number = _page_number(form.get("page", "1"))
        try:
            user_id = html_page.user_from_key(form.get("user", ""))
        except ValueError:
            user_id = None
        if number is None or not user_id:
            return PlainTextResponse("400 bad request: the form names no user or page\n", status_code=400)
        action = form.get("action", "")
        note = (form.get("note") or "").replace("\r\n", "\n") or None
        until = form.get("until") if action == SNOOZE_ACTION else None
        try:
            await run_in_threadpool(self._record, user_id, action, note, form.get("by", self.reviewer), until)
        except (ReviewError, InputError) as exc:
            return PlainTextResponse(f"400 not recorded: {exc}\n", status_code=400)
        except AlreadyRunningError as exc:
            return PlainTextResponse(f"503 not recorded, the database is busy: {exc}\n", status_code=503)
        except ScreenerError as exc:
            return PlainTextResponse(f"503 not recorded: {exc}\n", status_code=503)
        return RedirectResponse(f"/?page={number}#{html_page.anchor_id(user_id)}", status_code=303)


async def _body(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it passes ``limit`` bytes (whatever Content-Length claims)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _page_number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and 1 <= len(text) <= 6 else None


def _form(body: bytes) -> dict[str, str] | None:
    """A URL-encoded form's fields, each given at most once; None when it is not one."""
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body),
                          max_num_fields=16, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None
    if any(len(values) != 1 for values in fields.values()):
        return None
    return {name: values[0] for name, values in fields.items()}


def create_app(db: str | Path, token: str, reviewer: str, settings: Settings) -> Starlette:
    """The app: ``GET /`` (the page, ``?page=N``) and ``POST /decide`` (one decision), behind :class:`AccessCheck`."""
    keys = Keys(token)
    server = Reviewer(Path(db), keys, reviewer, settings)
    return Starlette(
        routes=[Route("/", server.page, methods=["GET"]), Route("/decide", server.decide, methods=["POST"])],
        middleware=[Middleware(AccessCheck, keys=keys)],
    )


def access_token() -> tuple[str, bool]:
    """The token from ``SCREENER_SERVE_TOKEN``, else a new random one; and whether it is new."""
    given = os.environ.get(TOKEN_ENV)
    if given is None:
        return secrets.token_urlsafe(32), True
    if len(given) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{TOKEN_ENV} must have at least {MIN_TOKEN_CHARS} characters, got {len(given)}")
    return given, False


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # Listening before the URL is printed: a client that connects at once waits in the backlog until uvicorn
        # accepts, instead of being refused.
        sock.listen(128)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


def run(db: str | Path, host: str = "127.0.0.1", port: int = 8765, reviewer: str | None = None,
        settings: Settings | None = None) -> None:
    """Upgrade the database's schema if needed, print the URL with the access token, and serve until interrupted."""
    settings = settings or Settings()
    path = Path(db)
    if not path.is_file():
        raise InputError(f"{path} does not exist: expected a results database written by `screener scan`")
    with Store(path, settings) as store:
        if store.schema_version() is None:
            raise InputError(f"{path} has no screener results: run `screener scan` on it first")
        store.ensure_schema()
    token, generated = access_token()
    sock = _listen(host, port)
    bound = sock.getsockname()[1]
    if host not in _LOOPBACK:
        log.warning("serving on %s, not loopback: anyone who can reach it and holds the token can read the report",
                    host)
    where = f"http://{'[' + host + ']' if ':' in host else host}:{bound}/"
    shown = f"{where}?token={token}" if generated else f"{where}?token=<{TOKEN_ENV}>"
    print(f"screener serve: {path} at {shown}", flush=True)
    app = create_app(path, token, reviewer or decisions.default_reviewer(), settings)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", server_header=False)
    uvicorn.Server(config).run(sockets=[sock])
