"""Headless Debian Chromium against a real dashboard (`marginlens app`) on 127.0.0.1: what the browser tests share."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 # WebGL (the scatter is scattergl) on the software rasteriser: there is no GPU here
                 "--enable-unsafe-swiftshader", "--use-angle=swiftshader"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drag_box(page, area, start: tuple[float, float], end: tuple[float, float]) -> float:
    """Drag a box over `area` (a plotly drag layer) between two points given as fractions of its size,
    in small steps, as a person's mouse does (plotly ignores a single jump). Returns the perf_counter time
    of the mouse-up: where a person's selection ends and the wait for the dashboard begins."""
    box = area.bounding_box()
    assert box is not None
    x0, y0 = box["x"] + box["width"] * start[0], box["y"] + box["height"] * start[1]
    x1, y1 = box["x"] + box["width"] * end[0], box["y"] + box["height"] * end[1]
    page.mouse.move(x0, y0)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(x0 + (x1 - x0) * i / 10, y0 + (y1 - y0) * i / 10)
    page.mouse.up()
    return time.perf_counter()


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError("streamlit did not become healthy")


# The operator's and a viewer's sign-in tokens for every test server (`marginlens app --token ...`).
TOKEN = "test-operator-token-0123456789"
VIEWER_TOKEN = "test-viewer-token-0123456789"


def signed_in(url: str, path: str = "/", token: str = TOKEN) -> str:
    """The URL that signs a browser in (the gate sets its cookie and redirects to `path`)."""
    return f"{url}{path}?token={token}"


@contextmanager
def dashboard_server(workspace: str | os.PathLike, log: str | os.PathLike | None = None,
                     env: dict[str, str] | None = None, args: list[str] | None = None,
                     port: int | None = None) -> Iterator[str]:
    """`marginlens app` on a free port of 127.0.0.1 over `workspace`, offline, with the test tokens (and
    `args`); yields its base URL once healthy and stops it afterwards. Its output goes to `log`."""
    port = port or free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    out = open(log, "wb") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "marginlens"), "app", "--workspace", str(workspace), "--port", str(port),
         *([] if "--auth" in (args or []) else ["--token", TOKEN, "--viewer-token", VIEWER_TOKEN]), *(args or [])],
        cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log is not None:
            out.close()
