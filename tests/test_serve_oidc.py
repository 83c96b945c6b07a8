"""OIDC sign-in end to end: `marginlens app --auth oidc` with Streamlit's st.login against a real local OpenID
Connect provider (tests/oidc_provider.py), in headless Chromium: the allowlists decide who is an operator, who a
viewer, and who gets nothing."""

from __future__ import annotations

import pytest
from helpers_app import build_workspace
from helpers_browser import CHROMIUM, CHROMIUM_ARGS, dashboard_server, free_port
from oidc_provider import OIDCProvider


@pytest.fixture(scope="module")
def oidc_server(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: `make browser` installs Debian's chromium")
    root = tmp_path_factory.mktemp("oidc")
    ws = build_workspace(root / "workspace", n=10)
    provider = OIDCProvider("marginlens-test")
    port = free_port()
    auth = root / "auth.toml"
    auth.write_text(f'''[auth]
redirect_uri = "http://127.0.0.1:{port}/oauth2callback"
cookie_secret = "cookie-secret-for-the-oidc-test-0123456789"
client_id = "marginlens-test"
client_secret = "client-secret"
server_metadata_url = "{provider.issuer}/.well-known/openid-configuration"
''')
    args = ["--auth", "oidc", "--auth-config", str(auth), "--operator", "@team.example",
            "--allow", "viewer@partner.example"]
    try:
        with dashboard_server(ws.root, root / "server.log", args=args, port=port) as url:
            yield {"url": url, "provider": provider}
    finally:
        provider.close()


def _sign_in_as(browser, server, email: str):
    from playwright.sync_api import expect

    server["provider"].email = email
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.set_default_timeout(60_000)
    page.goto(server["url"])
    expect(page.get_by_text("Sign in to use this dashboard.")).to_be_visible()
    assert page.get_by_role("heading", name="Datasets").count() == 0
    page.get_by_role("button", name="Sign in").click()
    return page


def test_oidc_operator_viewer_and_stranger(oidc_server):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = _sign_in_as(browser, oidc_server, "alice@team.example")
            expect(page.get_by_text("Signed in: alice@team.example")).to_be_visible()
            expect(page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Score")).to_be_visible()
            page.close()

            page = _sign_in_as(browser, oidc_server, "viewer@partner.example")
            expect(page.get_by_text("Signed in: viewer@partner.example")).to_be_visible()
            expect(page.get_by_role("heading", name="Start")).to_be_visible()  # the default page, viewers' too
            assert page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Score").count() == 0
            page.close()

            page = _sign_in_as(browser, oidc_server, "mallory@elsewhere.example")
            expect(page.get_by_text("mallory@elsewhere.example may not use this dashboard")).to_be_visible()
            assert page.get_by_role("heading", name="Start").count() == 0
            page.close()

            # an operator's domain, claimed but not verified by the provider: nothing ("nOAuth")
            oidc_server["provider"].verified = False
            page = _sign_in_as(browser, oidc_server, "eve@team.example")
            expect(page.get_by_text("eve@team.example may not use this dashboard")).to_be_visible()
            assert page.locator('[data-testid="stSidebarNav"]').count() == 0
            page.close()
        finally:
            browser.close()
