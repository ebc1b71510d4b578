"""The read-token rule of /api/v1 for the HTML pages, in a form a browser can follow.

A browser cannot send an ``Authorization`` header from the address bar, so a page also takes the
token once as ``?token=``: a valid one is moved into a cookie (HttpOnly, SameSite=Lax, Secure over
HTTPS, path /runs, `COOKIE_DAYS` days) and the browser is redirected to the same address without
it, so the token stays out of the address bar, the history, Referer headers and every link the
pages print. Afterwards the cookie (or an ``Authorization: Bearer`` header, for scripts) is the
credential. The rule itself is `authorize`'s: without tokens configured everything is open; else a
read or admin token is needed. The cookie is read by the pages only, never by /api/v1.
"""

from __future__ import annotations

from html import escape
from typing import Final

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from spikewatch.server.api._auth import Scope
from spikewatch.server.api._deps import authorize, context
from spikewatch.server.report._page import INDEX_PATH
from spikewatch.server.report._style import STYLE

COOKIE: Final = "spikewatch_token"
TOKEN_PARAM: Final = "token"
COOKIE_DAYS: Final = 30
HEADERS: Final = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "script-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'",
}  # fmt: skip
"""Sent with every page: nothing cached or referred on, nothing loaded from elsewhere."""


def html_page(body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    """An HTML response with the pages' headers."""
    return HTMLResponse(body, status, headers={**HEADERS, **(headers or {})})


def message_page(status: int, title: str, text: str,
                 headers: dict[str, str] | None = None) -> HTMLResponse:  # fmt: skip
    """A short HTML page saying what went wrong (`text` is escaped)."""
    body = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
            f"</title><style>{STYLE}</style></head><body><main><nav><a href=\"{INDEX_PATH}\">All "
            f'runs</a></nav><h1>{escape(title)}</h1><p id="message">{escape(text)}</p></main>'
            "</body></html>")  # fmt: skip
    return html_page(body, status, headers)


def _denied(e: HTTPException, *, clear_cookie: bool) -> Response:
    hint = (f"This server needs a read token: open this address once with ?{TOKEN_PARAM}=TOKEN "
            "appended (the page then keeps it in a cookie and drops it from the address), or "
            "send an Authorization: Bearer header.")  # fmt: skip
    resp = message_page(e.status_code, f"{e.status_code}: {e.detail}", hint,
                        dict(e.headers or {}))  # fmt: skip
    if clear_cookie:
        resp.delete_cookie(COOKIE, path=INDEX_PATH)
    return resp


def _bearer(request: Request) -> str | None:
    kind, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if kind.lower() == "bearer" and token.strip() else None


def page_access(request: Request) -> Response | None:
    """None when the page may be served; else what to answer instead: a redirect that moves a
    `?token=` into the cookie, or a 401/403 page."""
    tokens = context(request).tokens
    given = request.query_params.get(TOKEN_PARAM)
    if given is not None:
        if tokens is not None:
            try:
                authorize(tokens, given, Scope.READ)
            except HTTPException as e:
                return _denied(e, clear_cookie=False)
        url = request.url.remove_query_params(TOKEN_PARAM)
        resp = RedirectResponse(url.path + (f"?{url.query}" if url.query else ""), 303,
                                headers=HEADERS)  # fmt: skip
        if tokens is not None:
            resp.set_cookie(COOKIE, given, max_age=COOKIE_DAYS * 86400, path=INDEX_PATH,
                            secure=request.url.scheme == "https", httponly=True,
                            samesite="lax")  # fmt: skip
        return resp
    if tokens is None:
        return None
    bearer, cookie = _bearer(request), request.cookies.get(COOKIE)
    try:
        authorize(tokens, bearer or cookie, Scope.READ)
    except HTTPException as e:
        return _denied(e, clear_cookie=bearer is None and cookie is not None)
    return None
