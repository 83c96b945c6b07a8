"""Issue 23, the Audit page in headless Chromium: the audit selector's label carries the job's state, and the
browser keeps the label it drew as the selected value, so a job watched from running to done must be relabelled
there too (AppTest reads the server's side only). The audit is real: a worker asking the scripted judge server,
which holds its answers until the page has drawn the running job."""

from __future__ import annotations

import json
import threading

import pytest
from helpers_app import DATASET, build_workspace
from helpers_browser import CHROMIUM, CHROMIUM_ARGS, dashboard_server, signed_in
from judge_server import ScriptedJudge
from marginlens.core.audit.audit_job import submit_audit
from marginlens.core.audit.audit_params import audit_params
from marginlens.core.chat_client import Endpoint


def test_the_audit_selector_says_done_when_the_panel_does(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: `make browser` installs Debian's chromium")
    expect.set_options(timeout=90_000)
    ws = build_workspace(tmp_path / "workspace", n=20)
    release = threading.Event()

    def answer(request) -> str:
        release.wait(timeout=300)
        return json.dumps({"winner": "A"})

    with ScriptedJudge(answer=answer) as judge, sync_playwright() as pw:
        ids = list(ws.load_pairs(DATASET)["pair_id"])[:2]
        job = submit_audit(ws, audit_params(DATASET, {"random": ids}, Endpoint("judge-held", judge.base_url)))
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            with dashboard_server(ws.root, tmp_path / "streamlit.log") as url:
                page = browser.new_page(viewport={"width": 1400, "height": 1600})
                page.set_default_timeout(90_000)
                page.goto(signed_in(url, "/audit"))
                selector = page.get_by_role("combobox", name="Audit")  # its value: the label drawn as selected
                expect(selector).to_match_aria_snapshot(
                    '- combobox "Audit": /judge judge-held · 2 pairs · .* · (queued|running)/')
                release.set()
                # the panel saw the job end and the page ran again: what the finished audit shows is there...
                expect(page.get_by_text("No decisive pair").first).to_be_visible()
                # ...and the selector says so too, not the state it had when first drawn
                expect(selector).to_match_aria_snapshot('- combobox "Audit": /judge judge-held · 2 pairs · .* · done/')
                assert job.status().state == "done"
        finally:
            browser.close()
