"""End to end in a real browser: `streamlit run app/main.py` on 127.0.0.1 and headless Debian Chromium
(driven by playwright over its own launch, no downloaded browser).

Opens the app, goes to Explore, waits for the WebGL scatter, checks that untrusted pair texts are shown
as text (no script runs, nothing is fetched from the canary server on 127.0.0.1), drags a box selection,
checks that the table and the pair viewer follow it, exports the selection and checks the written file.
A screenshot of Explore is saved under test-output/browser/ (gitignored).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers_app import DATASET, build_workspace
from helpers_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    dashboard_server,
    drag_box,
    free_port,
    signed_in,
    wait_healthy,
)

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "test-output" / "browser"


class Canary:
    """An HTTP server on 127.0.0.1 that records every request: the pair texts point at it."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                hits.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: `make browser` installs Debian's chromium")
    canary = Canary()
    root = tmp_path_factory.mktemp("e2e") / "workspace"
    ws = build_workspace(root, n=300, canary_port=canary.port)
    try:
        with dashboard_server(ws.root, root.parent / "streamlit.log") as url:
            yield {"url": url, "ws": ws, "canary": canary, "log": root.parent / "streamlit.log"}
    finally:
        canary.close()


def test_explore_brush_export_in_browser(server):
    from playwright.sync_api import expect, sync_playwright

    OUTPUT.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=60_000)
    timings: dict[str, float] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            # Streamlit scrolls inside its own container: a tall viewport shows the whole page
            page = browser.new_page(viewport={"width": 1500, "height": 2600})
            page.set_default_timeout(60_000)
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(signed_in(server["url"], "/data"))  # "/" is the start page
            expect(page.get_by_role("heading", name="Datasets")).to_be_visible()

            start = time.perf_counter()
            page.get_by_role("link", name="Explore").click()
            plot = page.locator('[data-testid="stPlotlyChart"]').first
            expect(plot.locator("canvas").first).to_be_visible()
            expect(page.get_by_text("Why this pair?")).to_be_visible()  # the pair card, near the page's end
            timings["explore_first_render_s"] = time.perf_counter() - start
            viewer = page.get_by_text(re.compile(r"^Pair [0-9a-f]{32}")).first
            before_pair = viewer.inner_text()
            before_count = page.get_by_text(re.compile(r"matching pairs; showing")).inner_text()
            page.screenshot(path=str(OUTPUT / "explore.png"), full_page=True)

            # Untrusted texts: ascending M_AP puts the adversarial pair first, so the viewer opens it.
            start = time.perf_counter()
            page.get_by_text("Ascending", exact=True).click()
            code = page.locator("pre")
            expect(code.filter(has_text='<img src="http://127.0.0.1').first).to_be_visible()
            timings["control_change_s"] = time.perf_counter() - start
            expect(code.filter(has_text="<script>window.__xss = 1</script>").first).to_be_visible()
            expect(code.filter(has_text="![tracker](http://127.0.0.1").first).to_be_visible()
            assert page.locator(f'img[src*="127.0.0.1:{server["canary"].port}"]').count() == 0
            assert page.locator(f'a[href*="127.0.0.1:{server["canary"].port}"]').count() == 0
            assert page.evaluate("() => window.__xss === undefined")
            page.screenshot(path=str(OUTPUT / "explore-untrusted.png"), full_page=True)
            page.get_by_text("Ascending", exact=True).click()
            expect(viewer).to_have_text(before_pair)

            # Box selection: drag over the middle of the plot area.
            start = time.perf_counter()
            drag_box(page, plot.locator(".nsewdrag").first, (0.35, 0.05), (0.75, 0.45))
            expect(page.get_by_text("Scatter selection:")).to_be_visible()
            counts = page.get_by_text(re.compile(r"matching pairs; showing"))
            expect(counts).not_to_have_text(before_count)
            timings["box_selection_s"] = time.perf_counter() - start
            after_count = counts.inner_text()
            assert int(after_count.split()[0].replace(",", "")) < 301
            expect(viewer).not_to_have_text(before_pair)
            page.screenshot(path=str(OUTPUT / "explore-brushed.png"), full_page=True)

            # Export the brushed part of the selection.
            page.get_by_role("link", name="Export").click()
            expect(page.get_by_text("Only pairs inside the scatter selection")).to_be_visible()
            page.get_by_role("button", name="Write export").click()
            expect(page.get_by_text(re.compile(r"^Wrote \d+ pairs"))).to_be_visible()
            wrote = int(re.search(r"Wrote (\d+) pairs", page.get_by_text(re.compile(r"^Wrote")).inner_text())[1])
            assert not dialogs, dialogs
        except Exception:
            page.screenshot(path=str(OUTPUT / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()

    assert server["canary"].hits == [], f"the page fetched untrusted URLs: {server['canary'].hits}"
    exports = sorted(server["ws"].exports_dir.glob("*.jsonl"))
    assert len(exports) == 1
    rows = [json.loads(line) for line in exports[0].read_text().splitlines()]
    manifest = json.loads(Path(str(exports[0]) + ".manifest.json").read_text())
    assert len(rows) == wrote == manifest["counts"]["exported"] > 0
    assert manifest["source"]["dataset"] == DATASET
    note = next(w for w in manifest["warnings"] if w.startswith("restricted to the scatter selection"))
    bounds = [float(v) for v in re.findall(r"\[([-0-9.e+]+), ([-0-9.e+]+)\]", note)[0]
              + re.findall(r"\[([-0-9.e+]+), ([-0-9.e+]+)\]", note)[1]]
    ex_lo, ex_hi, im_lo, im_hi = bounds
    slack = 1e-2  # the note prints 3 significant digits
    for row in rows:
        assert ex_lo - slack * abs(ex_lo) - slack <= row["m_ex"] <= ex_hi + slack * abs(ex_hi) + slack
        assert im_lo - slack * abs(im_lo) - slack <= row["m_im"] <= im_hi + slack * abs(im_hi) + slack
        assert row["rank"] <= manifest["counts"]["k"]
    assert manifest["counts"]["exported"] < manifest["counts"]["k"]
    shutil.copy(server["log"], OUTPUT / "streamlit.log")
    (OUTPUT / "timings.json").write_text(json.dumps(timings, indent=2))
    print("browser timings:", json.dumps(timings))


def test_make_run_path_opens_the_demo_scatter(tmp_path):
    """What `make run` starts -- `marginlens app --demo` -- seen in the browser: the demo's scatter."""
    import gzip

    from marginlens.core.demo.build import PAIRS_FILE
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: `make browser` installs Debian's chromium")
    n_pairs = str(len(gzip.decompress(PAIRS_FILE.read_bytes()).splitlines()))
    OUTPUT.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("MARGINLENS_TOKEN", None)
    log = tmp_path / "app.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "marginlens"), "app", "--demo", "--port", str(port),
                                 "--workspace", str(tmp_path / "ws")], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc)
        # a random token by default, in the URL the command prints (as Jupyter does)
        printed = re.search(r"open (http://127\.0\.0\.1:\d+/\?token=[\w.~-]+)", log.read_text()).group(1)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1500, "height": 2600})
                page.set_default_timeout(60_000)
                page.goto(url)  # without the token: the sign-in form and not a word of the demo
                expect(page.get_by_role("heading", name="MarginLens")).to_be_visible(timeout=60_000)
                assert "Datasets" not in page.content() and "demo" not in page.content().lower()
                page.goto(printed)
                expect(page.get_by_role("heading", name="Start")).to_be_visible(timeout=60_000)  # the start page
                page.get_by_role("link", name="Data", exact=True).click()
                expect(page.get_by_role("heading", name="Datasets")).to_be_visible(timeout=60_000)
                # the Data page opens on the imported demo (tables draw on a canvas: read the metric)
                expect(page.locator('[data-testid="stMetric"]').filter(has_text="Pairs").first).to_contain_text(n_pairs)
                page.get_by_role("link", name="Explore").click()
                plot = page.locator('[data-testid="stPlotlyChart"]').first
                expect(plot.locator("canvas").first).to_be_visible(timeout=60_000)
                expect(page.get_by_text("Why this pair?")).to_be_visible(timeout=60_000)
                pairs = page.locator('[data-testid="stMetric"]').filter(has_text="Pairs").first
                expect(pairs).to_contain_text(n_pairs)
                page.screenshot(path=str(OUTPUT / "demo-explore.png"), full_page=True)
            finally:
                browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
