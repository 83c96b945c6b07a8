"""The one door of the dashboard: an ASGI middleware in front of everything Streamlit serves.

Every HTTP request and WebSocket handshake passes here first (`app/server.py` installs it), so no page, no
script run, no upload and no download reaches a client that has not signed in:

- the Host header must be one this server answers to (a page on evil.example rebound to 127.0.0.1 is
  refused before anything else — and it would hold no sign-in cookie anyway);
- under token sign-in (the default, as Jupyter does), a request carries the operator's or a viewer's token
  in an HttpOnly, SameSite=Strict cookie; `?token=...` on any URL sets that cookie and redirects to the same
  URL without it, so the token leaves the address bar and the browser history;
- the role of the request travels to the script as the `x-marginlens-role` header, which this middleware
  strips from every client request first: a client cannot claim a role.

Without a valid sign-in a client gets the sign-in form (401) and the health check, nothing else: no script,
no static bundle, no WebSocket. Under OIDC, Streamlit's own `st.login` signs users in and the script checks
the allowlist (`app/access.py`); this middleware then only checks the Host header and strips the role header.
"""

from __future__ import annotations

import hmac
import html
import re
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

from marginlens.app.serve_config import ServeConfig, load

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ROLE_HEADER = b"x-marginlens-role"
SIGNIN_PATH = "/_signin"
SIGNOUT_PATH = "/_signout"
OPEN_PATHS = ("/_stcore/health",)  # says "ok" and nothing else: what a load balancer or a test waits on
_MAX_FORM = 4096


def role_for(config: ServeConfig, token: str | None) -> str | None:
    """'operator', 'viewer' or None for a presented token (constant-time comparisons)."""
    if not token:
        return None
    if config.operator_token and hmac.compare_digest(token.encode(), config.operator_token.encode()):
        return "operator"
    if config.viewer_token and hmac.compare_digest(token.encode(), config.viewer_token.encode()):
        return "viewer"
    return None


def host_allowed(config: ServeConfig, host_header: str | None) -> bool:
    if not config.allowed_hosts:
        return True
    if not host_header:
        return False
    host = host_header.strip().lower()
    host = host[: host.index("]") + 1] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
    return any(host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:]))
               for allowed in config.allowed_hosts)


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {k.lower(): v for k, v in scope.get("headers", [])}


def _cookie(scope: Scope, name: str) -> str | None:
    raw = _headers(scope).get(b"cookie")
    if not raw:
        return None
    jar = SimpleCookie()
    try:
        jar.load(raw.decode("latin-1"))
    except Exception:  # a malformed Cookie header is a client without a sign-in, not a server error
        return None
    morsel = jar.get(name)
    return morsel.value if morsel else None


def _page(title: str, body: str) -> bytes:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<meta name='viewport' content='width=device-width'><style>body{font-family:sans-serif;"
            "max-width:34rem;margin:4rem auto;padding:0 1rem;color:#222}input{font-size:1rem;padding:.4rem;"
            "width:100%;box-sizing:border-box}button{margin-top:.8rem;font-size:1rem;padding:.4rem 1rem}"
            f".err{{color:#b00}}</style></head><body><h1>MarginLens</h1>{body}</body></html>").encode()


def signin_form(next_path: str, error: str | None = None) -> bytes:
    msg = f"<p class='err'>{html.escape(error)}</p>" if error else ""
    return _page("Sign in - MarginLens", (
        "<p>This dashboard needs a token. It was printed in the terminal that started "
        "<code>marginlens app</code> (the URL ends in <code>?token=...</code>); ask whoever runs it.</p>"
        f"{msg}<form method='post' action='{SIGNIN_PATH}'>"
        f"<input type='hidden' name='next' value='{html.escape(next_path)}'>"
        "<label>Token<br><input name='token' type='password' autocomplete='current-password' autofocus></label>"
        "<br><button type='submit'>Sign in</button></form>"))


_LOCAL_PATH = re.compile(r"/(?![/\\])[\x21-\x7e]*")


def _safe_next(path: str) -> str:
    # Only a path on this server, in printable ASCII: "//evil.example", a backslash, or a tab that browsers drop
    # ("/\t/evil.example") would turn the sign-in into an open redirect.
    return path if _LOCAL_PATH.fullmatch(path) else "/"


def same_origin(headers: dict[bytes, bytes]) -> bool:
    """A browser's Origin, when it sent one, names this very host and port. Cookies and Streamlit's own check
    ignore ports: without this a page a co-tenant serves on 127.0.0.1:9000 could open the dashboard's WebSocket
    with the operator's cookie."""
    origin = headers.get(b"origin")
    if origin is None:
        return True  # not a browser's cross-site request: such a client holds a cookie only if it has the token
    netloc = origin.decode("latin-1").partition("://")[2].lower()
    return netloc == headers.get(b"host", b"").decode("latin-1").lower()


class SignInGate:
    def __init__(self, app: ASGIApp, config: ServeConfig | None = None):
        self.app = app
        self._config = config

    @property
    def config(self) -> ServeConfig:
        config = self._config or load()
        if config is None:
            raise RuntimeError("no serve config: start the dashboard with `marginlens app`")
        return config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        config = self.config
        headers = _headers(scope)
        if not host_allowed(config, headers.get(b"host", b"").decode("latin-1")):
            await self._refuse(scope, receive, send, 403, b"This server does not answer to that host name.\n")
            return
        if (scope["type"] == "websocket" or scope.get("method") not in ("GET", "HEAD")) and not same_origin(headers):
            await self._refuse(scope, receive, send, 403, b"Cross-origin request refused.\n")
            return
        # A client never chooses its role: drop any role header it sent before deciding one.
        scope["headers"] = [(k, v) for k, v in scope.get("headers", []) if k.lower() != ROLE_HEADER]
        path = scope.get("path", "/")
        if config.auth != "token":
            if config.auth == "none":
                scope["headers"].append((ROLE_HEADER, b"operator"))
            await self.app(scope, receive, send)
            return
        if scope["type"] == "http" and path == SIGNIN_PATH:
            await self._signin(scope, receive, send, config)
            return
        if scope["type"] == "http" and path == SIGNOUT_PATH:
            await _respond(send, 303, b"", [(b"location", b"/"), self._set_cookie(config, "", scope, 0)])
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        if scope["type"] == "http" and "token" in query:
            role = role_for(config, query["token"])
            rest = urlencode([(k, v) for k, v in query.items() if k != "token"])
            target = (_safe_next(path) + (f"?{rest}" if rest else "")).encode()
            if role is None:
                await _respond(send, 401, signin_form(target.decode(), "That token is not valid."), _HTML)
                return
            await _respond(send, 303, b"", [(b"location", target), self._set_cookie(config, query["token"], scope)])
            return
        role = role_for(config, _cookie(scope, config.cookie_name))
        if role is None:
            if scope["type"] == "http" and path in OPEN_PATHS:
                await self.app(scope, receive, send)
                return
            wants_page = scope["type"] == "http" and scope.get("method") in ("GET", "HEAD")
            await self._refuse(scope, receive, send, 401, signin_form(_safe_next(path)) if wants_page
                               else b"Sign in first.\n", _HTML if wants_page else _TEXT)
            return
        scope["headers"].append((ROLE_HEADER, role.encode()))
        await self.app(scope, receive, _framed_by_itself_only(send))

    def _set_cookie(self, config: ServeConfig, value: str, scope: Scope, max_age: int | None = None
                    ) -> tuple[bytes, bytes]:
        secure = "; Secure" if scope.get("scheme") in ("https", "wss") else ""
        age = f"; Max-Age={max_age}" if max_age is not None else ""
        return (b"set-cookie",
                f"{config.cookie_name}={value}; Path=/; HttpOnly; SameSite=Strict{secure}{age}".encode("latin-1"))

    async def _signin(self, scope: Scope, receive: Receive, send: Send, config: ServeConfig) -> None:
        if scope.get("method") != "POST":
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            await _respond(send, 200, signin_form(_safe_next(query.get("next", "/"))), _HTML)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > _MAX_FORM:
                await _respond(send, 413, b"Too large.\n", _TEXT)
                return
            if not message.get("more_body"):
                break
        form = dict(parse_qsl(body.decode("utf-8", "replace")))
        target = _safe_next(form.get("next", "/"))
        token = form.get("token", "").strip()
        if role_for(config, token) is None:
            await _respond(send, 401, signin_form(target, "That token is not valid."), _HTML)
            return
        await _respond(send, 303, b"", [(b"location", target.encode()), self._set_cookie(config, token, scope)])

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, body: bytes,
                      headers: list[tuple[bytes, bytes]] | None = None) -> None:
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})  # before accept: the handshake gets 403
            return
        await _respond(send, status, body, headers or _TEXT)


def _framed_by_itself_only(send: Send) -> Send:
    """No other site may frame the dashboard (clickjacking a signed-in operator's buttons); its own component
    iframes still load."""
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (b"x-frame-options", b"SAMEORIGIN")]
        await send(message)

    return wrapped


_HTML = [(b"content-type", b"text/html; charset=utf-8")]
_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store"),
                            (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]})
    await send({"type": "http.response.body", "body": body})
