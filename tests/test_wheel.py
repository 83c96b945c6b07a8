"""The built wheel is the product: it installs into a fresh virtual environment and serves the dashboard.

Builds the wheel from this checkout (no pyproject warnings), installs it into a new venv, and from a
folder outside the source tree starts `marginlens app --demo` with the installed console script; a
headless Chromium then opens every page and finds no exception on any of them.

The fresh venv gets the wheel itself with `--no-deps`; its third-party dependencies (torch,
transformers, streamlit, ...) come from the test runner's environment through a .pth line, because
downloading them again would cost minutes and gigabytes per run. What the wheel itself must carry —
core, app, pages, the demo data, the console script and the `marginlens.commands` entry point — can
only come from the wheel: the source tree is neither on the path nor the working directory.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from helpers_browser import CHROMIUM, CHROMIUM_ARGS, TOKEN, free_port, signed_in, wait_healthy
from marginlens.app.navigation import DEFAULT_PAGE, PAGES

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "test-output" / "wheel"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding the wheel built from this checkout; returns its bin/ folder."""
    root = tmp_path_factory.mktemp("wheel")
    # from a copy: setuptools reuses a build/ folder it finds, and a stale one would ship deleted modules
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", "test-output", "marginlens-workspace"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(root / "dist"),
                            str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    # setuptools reports configuration problems as Python warnings ("...Warning: ..."); pip's own
    # upper-case "WARNING:" lines are about this machine's package index, not the project
    warnings = [line for line in (build.stdout + build.stderr).splitlines() if re.search(r"[a-z]Warning\b", line)]
    assert not warnings, "\n".join(warnings)
    wheel = next((root / "dist").glob("marginlens-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for page in PAGES:
        assert f"marginlens/pages/{page}_page.py" in names
    assert "marginlens/app/main.py" in names
    # every module of the source tree ships (a subpackage missing from pyproject's list would not)
    modules = {f"marginlens/{path.relative_to(REPO).as_posix()}" for folder in ("core", "app", "pages")
               for path in (REPO / folder).rglob("*.py")}
    assert not modules - set(names), sorted(modules - set(names))
    assert any(n.startswith("marginlens/core/demo/demo_data/scores/") for n in names)
    assert not any(n.startswith(("core/", "app/", "pages/", "tests/")) for n in names), "generic top-level packages"

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    site = Path(subprocess.check_output([str(venv / "bin" / "python"), "-c",
                                         "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    (site / "runner-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
                   check=True, timeout=300)
    return venv / "bin"


def test_installed_package_is_the_wheel_not_the_checkout(installed, tmp_path):
    code = "import marginlens.core, marginlens.app, marginlens.pages; print(marginlens.core.__file__)"
    where = subprocess.check_output([str(installed / "python"), "-c", code], cwd=tmp_path, text=True,
                                    env={**os.environ, "PYTHONPATH": ""}).strip()
    assert where.startswith(str(installed.parent)), where
    help_text = subprocess.check_output([str(installed / "marginlens"), "--help"], cwd=tmp_path, text=True)
    assert "app" in help_text.split("positional arguments:")[1]  # the dashboard command, from the entry point


def test_marginlens_app_from_the_wheel_renders_every_page(installed, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: `make browser` installs Debian's chromium")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(tmp_path / "app.log", "wb")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.Popen([str(installed / "marginlens"), "app", "--demo", "--port", str(port),
                             "--workspace", str(tmp_path / "ws"), "--token", TOKEN], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, timeout=120)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1500, "height": 2600})
                page.set_default_timeout(90_000)
                for name, (title, _icon) in PAGES.items():
                    page.goto(signed_in(url, "/" if name == DEFAULT_PAGE else f"/{name}"))
                    expect(page.locator('[data-testid="stSidebarNav"]')).to_contain_text(title)
                    expect(page.locator("h1").first).to_be_visible()
                    # the script run has finished: whatever it raised is on the page now
                    expect(page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]')).to_have_count(
                        1, timeout=60_000)  # a page's first run imports torch and friends: seconds on 2 busy cores
                    page.screenshot(path=str(OUTPUT / f"{name}.png"), full_page=True)
                    exceptions = page.locator('[data-testid="stException"]')
                    assert exceptions.count() == 0, f"{title}: {exceptions.first.inner_text()}"
                    # an uncaught error shows as a message with an id (app/error_report.py), not a traceback
                    assert page.get_by_text("error id").count() == 0, title
            finally:
                browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert "Traceback" not in (tmp_path / "app.log").read_text(errors="replace")
