"""Issue 12 in a real browser (headless Chromium against `streamlit run app/main.py`), where the behaviour
is the browser's: Enter in a Train field launches nothing (a run starts only from its button, and then waits
its turn for the machine), an audit against an unreachable endpoint is refused at once with the reason on
the page, and an export downloads from the Export page."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest
from helpers_app import DATASET, POLICY_FP, build_workspace
from helpers_browser import CHROMIUM, CHROMIUM_ARGS, dashboard_server, signed_in
from marginlens.app.explore_view import ExploreControls, compute_view
from marginlens.core import jobs
from marginlens.core.selection.export import export_selection
from marginlens.core.selection.margins import load_margins
from marginlens.core.training.train_slot import LOCK_ENV
from tiny_models import tiny_llama  # noqa: F401  (session fixture)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_llama):  # noqa: F811
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: `make browser` installs Debian's chromium")
    root = tmp_path_factory.mktemp("traps")
    ws = build_workspace(root / "workspace", n=75)
    margins = load_margins(ws, DATASET, policy_fp=POLICY_FP)
    export_selection(ws, DATASET, compute_view(margins, ExploreControls(ratio=0.5)).selection, margins, "cut.jsonl")
    lock = root / "train.lock"
    # the tiny model's folder is a data root: the dashboard reads server folders only under one
    with dashboard_server(ws.root, root / "streamlit.log", {LOCK_ENV: str(lock)},
                          ["--data-root", str(tiny_llama.parent)]) as url:
        yield {"url": url, "ws": ws, "lock": lock}


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _page(browser, url: str, path: str = "/"):
    page = browser.new_page(viewport={"width": 1500, "height": 2600}, accept_downloads=True)
    page.set_default_timeout(60_000)
    page.goto(signed_in(url, path))
    return page


def test_enter_in_a_train_field_launches_nothing(server, browser, tiny_llama):  # noqa: F811
    from playwright.sync_api import expect

    ws = server["ws"]
    holder = os.open(server["lock"], os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(holder, fcntl.LOCK_EX)  # a run already trains on this machine
    try:
        page = _page(browser, server["url"], "/train")
        expect(page.get_by_role("button", name="Launch training")).to_be_visible()
        model = page.get_by_label("Policy model to train (Hub id or folder)")
        model.fill(str(tiny_llama))
        model.press("Enter")
        for label, value in (("max_steps", "2"), ("effective_batch_size", "4"), ("learning_rate", "0.001")):
            field = page.get_by_label(label, exact=True)
            field.fill(value)
            field.press("Enter")
            time.sleep(1.0)
        expect(page.get_by_text("effective batch 4 /")).to_be_visible()  # the derived line followed
        time.sleep(2.0)
        assert jobs.list_jobs(ws, kind="train") == []  # four Enters, no run
        page.get_by_role("button", name="Launch training").click()
        expect(page.get_by_text("queued: waiting for another training run").first).to_be_visible()  # its turn
        (job,) = jobs.list_jobs(ws, kind="train")
        params = job.spec["params"]
        assert params["overrides"]["max_steps"] == 2 and params["overrides"]["effective_batch_size"] == 4
        assert params["trl"]["learning_rate"] == 0.001
        job.cancel()
        assert job.wait(poll=0.2, timeout=60).state == "cancelled"
        page.close()
    finally:
        os.close(holder)


def test_audit_against_an_unreachable_endpoint_is_refused_on_the_page(server, browser):
    from playwright.sync_api import expect

    page = _page(browser, server["url"], "/audit")
    page.get_by_role("textbox", name="Base URL").fill("http://127.0.0.1:9/v1")
    page.get_by_role("textbox", name="Judge model").fill("gpt-4o")
    page.get_by_role("button", name="Estimate cost").click()
    page.get_by_role("button", name="Start audit").click()
    expect(page.get_by_text("cannot reach the judge endpoint http://127.0.0.1:9/v1")).to_be_visible()
    assert jobs.list_jobs(server["ws"], kind="audit") == []
    page.close()


def test_export_downloads_from_the_browser(server, browser):
    from playwright.sync_api import expect

    page = _page(browser, server["url"], "/export")
    page.get_by_role("button", name="Write export").click()
    expect(page.get_by_text("Wrote")).to_be_visible()
    written = next(p for p in server["ws"].exports_dir.glob("*.jsonl") if p.name != "cut.jsonl")
    button = page.get_by_test_id("stDownloadButton").get_by_role("button", name=f"Download {written.name}")
    with page.expect_download() as info:
        button.click()
    download = info.value
    assert download.suggested_filename == written.name
    assert Path(download.path()).read_bytes() == written.read_bytes()
    page.close()
