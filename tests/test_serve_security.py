"""Attacks on a real dashboard (`marginlens app` on 127.0.0.1) over raw HTTP, WebSocket and headless Chromium:
what an outside client could do before sign-in existed, refused now. The threat model is docs/SECURITY.md."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_app import DATASET, build_workspace
from helpers_browser import CHROMIUM, CHROMIUM_ARGS, TOKEN, VIEWER_TOKEN, dashboard_server, signed_in

SERVER_KEY = "sk-server-secret-never-leaves"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    ws = build_workspace(root / "workspace", n=20)
    log = root / "server.log"
    with dashboard_server(ws.root, log, {"OPENAI_API_KEY": SERVER_KEY, "HF_TOKEN": "hf_server_secret"}) as url:
        yield {"url": url, "port": int(url.rsplit(":", 1)[1]), "ws": ws, "log": log}


def request(server, path: str, headers: dict[str, str] | None = None, method: str = "GET",
            body: str | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    response.body = response.read()
    conn.close()
    return response


def cookie(token: str, server) -> dict[str, str]:
    return {"Cookie": f"marginlens-{server['port']}={token}"}


def ws_handshake(server, headers: dict[str, str]) -> int:
    """The status of a WebSocket handshake on Streamlit's stream (101: a session would start)."""
    conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=30)
    conn.request("GET", "/_stcore/stream", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol": "streamlit",
        **headers})
    status = conn.getresponse().status
    conn.close()
    return status


def test_without_a_token_a_client_gets_the_sign_in_form_and_nothing_else(server):
    origin = {"Origin": server["url"]}
    for path in ("/", "/explore", "/data?dataset=prefs", "/static/js/index.js", "/_stcore/host-config",
                 "/media/anything.jsonl"):
        response = request(server, path)
        assert response.status == 401, path
        assert b"Which answer is safe" not in response.body and DATASET.encode() not in response.body
    assert b"needs a token" in request(server, "/").body
    assert ws_handshake(server, origin) == 403  # no session, so no script run and no widget action
    assert ws_handshake(server, {**origin, **cookie("wrong-token-wrong-token", server)}) == 403
    assert request(server, "/?token=wrong-token-wrong-token").status == 401
    assert request(server, "/_stcore/health").body == b"ok"  # the one open path says only "ok"
    # with the token, the same handshake opens
    assert ws_handshake(server, {**origin, **cookie(TOKEN, server)}) == 101


def test_the_token_url_sets_an_httponly_cookie_and_leaves_the_address_bar(server):
    response = request(server, f"/explore?dataset={DATASET}&token={TOKEN}")
    assert response.status == 303
    assert response.getheader("Location") == f"/explore?dataset={DATASET}"
    set_cookie = response.getheader("Set-Cookie")
    assert set_cookie.startswith(f"marginlens-{server['port']}={TOKEN};")
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    # the form posts the token; a "next" off this server is not followed (no open redirect)
    for evil_next in ("//evil.example/x", "/%09/evil.example", "/\\evil.example", "https://evil.example"):
        form = f"token={TOKEN}&next={evil_next}"
        response = request(server, "/_signin", {"Content-Type": "application/x-www-form-urlencoded"}, "POST", form)
        assert response.status == 303 and response.getheader("Location") == "/", evil_next


def test_dns_rebinding_is_refused_even_with_a_sign_in(server):
    """A page on evil.example rebound to 127.0.0.1 talks to the server under Host: evil.example."""
    evil = {"Host": f"evil.example:{server['port']}", "Origin": f"http://evil.example:{server['port']}"}
    assert request(server, "/", {**evil, **cookie(TOKEN, server)}).status == 403
    assert ws_handshake(server, {**evil, **cookie(TOKEN, server)}) == 403
    assert request(server, f"/?token={TOKEN}", evil).status == 403
    signed = request(server, "/", {"Host": f"localhost:{server['port']}", **cookie(TOKEN, server)})
    assert signed.status == 200
    assert signed.getheader("X-Frame-Options") == "SAMEORIGIN"  # no other site frames a signed-in page


def test_a_page_on_another_port_of_this_host_cannot_use_the_cookie(server):
    """Cookies ignore ports, and so does Streamlit's own origin check: a co-tenant's page on 127.0.0.1:9000 opening
    the dashboard's WebSocket would carry the operator's cookie. The gate wants Origin to be this very server."""
    other = {"Origin": "http://127.0.0.1:9000", **cookie(TOKEN, server)}
    assert ws_handshake(server, other) == 403
    assert request(server, "/_stcore/upload_file/x/y", other, "PUT", "data").status == 403
    assert ws_handshake(server, {"Origin": server["url"], **cookie(TOKEN, server)}) == 101


def test_the_server_holds_no_key_in_its_environment_and_no_config_on_disk(server):
    """Jobs the dashboard starts inherit its environment: the launching shell's OPENAI_API_KEY must not be
    there, and the private file that carried the tokens is gone once the server has read it."""
    pid = subprocess.run(["pgrep", "-f", "--", f"--server.port {server['port']}"], capture_output=True, text=True)
    pids = [int(p) for p in pid.stdout.split()]
    assert pids
    for p in pids:
        environ = Path(f"/proc/{p}/environ").read_bytes()
        assert SERVER_KEY.encode() not in environ and TOKEN.encode() not in environ
        assert b"HF_TOKEN=" not in environ and b"HF_HUB_DISABLE_IMPLICIT_TOKEN=1" in environ
        config = [v for v in environ.split(b"\0") if v.startswith(b"MARGINLENS_SERVE_CONFIG=")]
        assert config and not Path(config[0].split(b"=", 1)[1].decode()).exists()


def test_no_auth_is_refused_off_loopback_and_weak_tokens_are_refused(tmp_path):
    marginlens = str(Path(sys.executable).parent / "marginlens")
    run = subprocess.run([marginlens, "app", "--no-auth", "--host", "0.0.0.0", "--workspace", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "--no-auth on 0.0.0.0" in run.stdout + run.stderr
    run = subprocess.run([marginlens, "app", "--token", "short", "--workspace", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "at least 16 characters" in run.stdout + run.stderr


def test_a_viewer_browses_but_cannot_act_and_cannot_claim_a_role(server):
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: `make browser` installs Debian's chromium")
    from playwright.sync_api import expect, sync_playwright

    out = Path(os.environ.get("MARGINLENS_TEST_OUTPUT", Path(__file__).resolve().parent.parent / "test-output"))
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            # the client sends the operator's role header itself: the gate drops it
            context = browser.new_context(viewport={"width": 1400, "height": 2000},
                                          extra_http_headers={"x-marginlens-role": "operator"})
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.goto(signed_in(server["url"], "/", VIEWER_TOKEN))
            expect(page.get_by_text("Signed in: viewer")).to_be_visible()
            expect(page.get_by_role("heading", name="Start")).to_be_visible()  # the start page, read-only
            nav = page.locator('[data-testid="stSidebarNav"]')
            expect(nav.get_by_role("link", name="Explore")).to_be_visible()
            for hidden in ("Score", "Train", "Experiments", "Self-play"):
                assert nav.get_by_role("link", name=hidden).count() == 0
            page.goto(server["url"] + "/score")  # a hidden page by URL: the default page, not Score
            expect(page.get_by_role("heading", name="Start")).to_be_visible()
            assert page.get_by_role("button", name="Start scoring").count() == 0
            page.screenshot(path=str(out / "viewer-data.png"), full_page=True)
            page.goto(server["url"] + "/audit")
            expect(page.get_by_role("heading", name="Audit")).to_be_visible()
            assert page.get_by_role("button", name="Start audit").count() == 0
            page.screenshot(path=str(out / "viewer-audit.png"), full_page=True)
            # sign out: the next page is the sign-in form
            page.goto(server["url"] + "/_signout")
            expect(page.get_by_text("needs a token")).to_be_visible()
            context.close()
        finally:
            browser.close()


def test_main_refuses_to_serve_without_marginlens_app(monkeypatch):
    """`streamlit run app/main.py` has no gate: it must serve nothing."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.delenv("MARGINLENS_SERVE_CONFIG", raising=False)
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app" / "main.py"), default_timeout=60)
    at.run()
    assert [e.value for e in at.error] and "marginlens app" in at.error[0].value
    assert not at.sidebar.caption


def test_an_uncaught_error_shows_an_id_and_keeps_the_traceback_in_the_log(caplog):
    from streamlit.testing.v1 import AppTest

    def page():
        from marginlens.app.error_report import report

        try:
            raise ValueError("cannot read /srv/secret/config.yaml")
        except ValueError as exc:
            report(exc)

    at = AppTest.from_function(page, default_timeout=30)
    with caplog.at_level("ERROR", logger="marginlens.dashboard"):
        at.run()
    shown = at.error[0].value
    assert "/srv/secret" not in shown and "ValueError" in shown
    error_id = shown.split("error id `")[1].split("`")[0]
    assert any(error_id in r.getMessage() and "/srv/secret/config.yaml" in r.getMessage() for r in caplog.records)
