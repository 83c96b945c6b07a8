"""The README's first screen, run as written: its HH-RLHF session on a CPU with no GPU and no API key.

The commands come from the README's fenced blocks under SECTION, each run as a `marginlens` subprocess in a
folder holding the real HH-RLHF harmless-base test split as `hh.jsonl.gz`, so the README's own workspace
(./marginlens-workspace) and file name are used. Two things are put in place of what a test cannot have:
the rating endpoint URL is a scripted OpenAI-compatible server's (it rates every answer "Rating: N"), and
`marginlens app` gets a free port. The no-endpoint block runs where a user without an endpoint would run
it: after the implicit scoring, before any rating exists. It loads SmolLM2-135M, hence `slow`.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from helpers_app import app_test, no_errors
from helpers_browser import free_port, wait_healthy
from judge_server import ScriptedJudge
from marginlens.core.workspace import Workspace

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
SECTION = "## Your own data on a CPU"
README_URL = "http://127.0.0.1:8000/v1"  # the rating endpoint the README names; the scripted server's here
HH = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
MARGINLENS = Path(sys.executable).with_name("marginlens")
_RESPONSE = re.compile(r"\[Response\]\n(.*?)\n\[End of Response\]", re.DOTALL)


def section_blocks(text: str, heading: str = SECTION) -> list[list[list[str]]]:
    """The fenced blocks between `heading` and the next `## ` heading, each as its commands' argv lists
    (backslash continuations joined, `# ...` comments dropped, blank lines skipped)."""
    start = text.find("\n" + heading)
    assert start >= 0, f"README.md has no section starting {heading!r}"
    end = text.find("\n## ", start + 1)
    body = text[start:] if end < 0 else text[start:end]
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", body, re.DOTALL | re.MULTILINE)
    return [[shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines() if line.strip()]
            for block in blocks]


def rating(request) -> str:
    """A rating a rubric-following model could give: from the answer's length, so margins vary."""
    answer = _RESPONSE.search(request.messages[-1]["content"]).group(1)
    return f"Rating: {1 + len(answer) % 10}\nScripted."


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    assert argv[0] == "marginlens", f"the README's session runs marginlens only, not {argv}"
    done = subprocess.run([str(MARGINLENS), *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"`{shlex.join(argv)}` exited {done.returncode}:\n{output[-3000:]}"
    return output


def serve_and_sign_in(argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    """`marginlens app` as written (on a free port): it prints a sign-in URL, serves, and the URL signs in."""
    port = free_port()
    proc = subprocess.Popen([str(MARGINLENS), *argv[1:], "--port", str(port)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
        assert f"127.0.0.1:{port}/?token=" in first, first
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        target = urlsplit(first.split("open ", 1)[1].strip())
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", f"/?{target.query}")
        signed = conn.getresponse()
        signed.read()
        cookie = signed.getheader("set-cookie", "").split(";")[0]
        assert signed.status == 303 and "=" in cookie and not cookie.endswith("="), (signed.status, cookie)
        conn.request("GET", "/", headers={"Cookie": cookie})
        page = conn.getresponse()
        assert page.status == 200 and b"<html" in page.read().lower()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def plotted(values: list | dict) -> np.ndarray:
    """A plotly trace's coordinates: a list, or plotly's typed-array form {"dtype", "bdata"}."""
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).astype(np.float64)
    return np.array(values, dtype=np.float64)


def exported_rows(output: str) -> list[dict]:
    """The rows of the export a `select` wrote (the path it prints after 'wrote')."""
    path = Path(re.search(r"wrote (\S+\.jsonl)", output).group(1))
    assert path.parent.name == "exports" and path.parent.parent.name == "marginlens-workspace", path
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    selected = int(re.search(r"selected (\d+) of", output).group(1))
    assert len(rows) == selected > 0, output
    return rows


def test_the_readme_first_screen_runs_as_written_on_hh(tmp_path):
    if not HH.exists():
        pytest.skip(f"{HH} is absent (a clone without ../shared)")
    text = README.read_text(encoding="utf-8")
    assert text.find(SECTION) < text.find("## Reference"), "the session is on the README's first screen"
    session, no_endpoint = section_blocks(text)
    rating_at = [i for i, argv in enumerate(session) if "--llm-rating" in argv]
    assert len(rating_at) == 1 and README_URL in session[rating_at[0]], session
    assert [argv[:2] for argv in session if argv[1] == "select"] == [["marginlens", "select"]]

    scoring = next(argv for argv in session if argv[1] == "score")
    sample = int(scoring[scoring.index("--sample") + 1])

    shutil.copyfile(HH, tmp_path / "hh.jsonl.gz")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "MARGINLENS_WORKSPACE")}
    env.update(HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")  # no GPU, no key, no network
    outputs: dict[str, str] = {}
    with ScriptedJudge(answer=rating) as rater:
        for i, argv in enumerate(session):
            if i == rating_at[0]:
                for other in no_endpoint:  # where a user without an endpoint stops and selects
                    outputs["no endpoint " + other[1]] = run(other, tmp_path, env)
                argv = [rater.base_url if a == README_URL else a for a in argv]
            if argv[1] == "app":
                serve_and_sign_in(argv, tmp_path, env)
            else:
                outputs[argv[1]] = run(argv, tmp_path, env)
        rated = len(rater.requests)

    ws = Workspace(tmp_path / "marginlens-workspace")
    assert rated == 2 * sample and "overlap" in outputs["compare"]  # both answers of the sample, once
    by_map = exported_rows(outputs["select"])
    by_implicit = exported_rows(outputs["no endpoint select"])
    assert {"chosen", "rejected"} <= set(by_map[0]) and {"chosen", "rejected"} <= set(by_implicit[0])

    # Explore on that workspace: both margins for the scored sample, in the scatter, without an error.
    at = app_test("explore_page.py", ws, timeout=120)
    at.run()
    no_errors(at)
    trace = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    xy = np.array([plotted(trace["x"]), plotted(trace["y"])])
    assert int(np.isfinite(xy).all(axis=0).sum()) == sample
