"""The CLI as a user runs it: the installed `marginlens` script in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

MARGINLENS = shutil.which("marginlens", path=str(Path(sys.executable).parent)) or "marginlens"


def run(*args: str, workspace: Path, env_ws: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if env_ws:
        env["MARGINLENS_WORKSPACE"] = str(workspace)
        argv = [MARGINLENS, *args]
    else:
        env.pop("MARGINLENS_WORKSPACE", None)
        argv = [MARGINLENS, *args, "--workspace", str(workspace)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


def test_import_list_info(tmp_path):
    ws = tmp_path / "ws"
    src = tmp_path / "prefs.jsonl"
    rows = [{"prompt": f"q{i}", "chosen": "good " * (i + 1), "rejected": "bad", "score_chosen": i, "score_rejected": 0}
            for i in range(10)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"prompt": "broken"\n')
    strict = run("import", str(src), "--name", "prefs", "--policy", "strict", workspace=ws)
    assert strict.returncode == 2
    assert "prefs.jsonl: line 11, field '<json>': malformed_json" in strict.stderr
    assert "Traceback" not in strict.stderr

    done = run("import", str(src), "--name", "prefs", "--policy", "skip", workspace=ws)
    assert done.returncode == 0, done.stderr
    assert "imported 10 of 11 rows as trl-standard" in done.stdout and "malformed_json" in done.stdout
    again = run("import", str(src), "--name", "prefs", "--policy", "skip", workspace=ws, env_ws=True)
    assert again.returncode == 0 and "no-op" in again.stdout

    listed = run("list", workspace=ws)
    assert "prefs" in listed.stdout and " 10 " in listed.stdout

    info = run("info", "prefs", "--json", workspace=ws)
    stats = json.loads(info.stdout)
    assert stats["rows"] == 10 and stats["score_columns"] == ["score_chosen", "score_rejected"]
    assert stats["chars"]["chosen"]["max"] == len("good " * 10)
    assert stats["explicit_margin"]["max"] == 9.0
    text = run("info", "prefs", workspace=ws)
    assert "10 pairs, format trl-standard" in text.stdout


def test_cli_errors_are_one_line(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    result = run("import", str(tmp_path / "empty.csv"), "--name", "e", workspace=tmp_path / "ws")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "empty" in result.stderr
    missing = run("info", "nope", workspace=tmp_path / "ws")
    assert missing.returncode == 2 and "no dataset named 'nope'" in missing.stderr
    bad_map = run("import", str(tmp_path / "empty.csv"), "--name", "e", "--map", "prompt", workspace=tmp_path / "ws")
    assert bad_map.returncode == 2 and "expected FIELD=COLUMN" in bad_map.stderr


def test_info_explains_flags_as_the_dashboard_does(tmp_path):
    """`info` reads the one table of flag notes (core.data.import_flags), not a copy of its own."""
    from marginlens.core.data.import_flags import flag_note

    ws, src = tmp_path / "ws", tmp_path / "prefs.jsonl"
    rows = [{"prompt": "q0", "chosen": "", "rejected": "bad"}, {"prompt": "q1", "chosen": "good", "rejected": "bad"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run("import", str(src), "--name", "prefs", workspace=ws).returncode == 0
    text = run("info", "prefs", workspace=ws)
    assert text.returncode == 0, text.stderr
    assert f"empty_response: 1 pair -- {flag_note('empty_response')}" in text.stdout
