"""An export never writes into, or deletes, anything but an export: `marginlens select --out ... --overwrite`
against a real workspace, which must come out byte-identical from every refused command."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from helpers_data import make_dataset, random_logprobs, standard_records
from marginlens.core.cli import main
from marginlens.core.errors import MarginLensError
from marginlens.core.selection.export import EXPORT_KIND, HF_MANIFEST, export_selection
from marginlens.core.selection.export_target import install
from marginlens.core.selection.margins import load_margins
from marginlens.core.selection.select import SelectionSpec, select
from marginlens.core.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ws(tmp_path):
    """A small workspace with every kind of thing an export must not touch, and one finished export."""
    ws = Workspace(tmp_path / "ws")
    make_dataset(ws, "d", standard_records(12), tmp_path)
    random_logprobs(ws, "d")
    (ws.jobs_dir / "job1").mkdir()
    (ws.jobs_dir / "job1" / "status.json").write_text('{"state": "done"}\n')
    (ws.audits_dir / "d").mkdir()
    (ws.audits_dir / "d" / "verdicts.jsonl").write_text('{"pair_id": "x", "verdict": "keep"}\n')
    assert select_cli(ws, "--out", "first.jsonl")[0] == 0
    return ws


def select_cli(ws: Workspace, *args: str, seed: int = 1) -> tuple[int, str, str]:
    """`marginlens select d --metric random ...` in this process: (exit code, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--workspace", str(ws.root), "select", "d", "--metric", "random", "--seed", str(seed),
                     "--ratio", "0.5", *args])
    return code, out.getvalue(), err.getvalue()


def snapshot(root: Path) -> dict[str, str]:
    """Every file (by content hash), folder and symlink under `root`."""
    seen = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                seen[rel] = "link -> " + os.readlink(path)
            elif path.is_dir():
                seen[rel] = "dir"
            else:
                seen[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return seen


def refused(ws: Workspace, *args: str, says: str, also: Path | None = None) -> str:
    """Run the command, expect a one-line refusal containing `says`, and nothing changed on disk."""
    before = snapshot(ws.root), also and snapshot(also)
    code, out, err = select_cli(ws, *args)
    assert code == 2, (out, err)
    assert says in err and "Traceback" not in err, err
    assert (snapshot(ws.root), also and snapshot(also)) == before
    return err


@pytest.mark.parametrize(("args", "says"), [
    (["--out", "..", "--format", "hf", "--overwrite"], "it is the workspace itself"),
    (["--out", "..", "--format", "jsonl", "--overwrite"], "it is the workspace itself"),
    (["--out", "../..", "--format", "hf", "--overwrite", "--outside-workspace"], "it holds the workspace"),
    (["--out", "../datasets/d", "--overwrite"], "inside the workspace"),
    (["--out", "../datasets/d", "--overwrite", "--outside-workspace"], "inside the workspace"),
    (["--out", "../scores", "--format", "hf", "--overwrite", "--outside-workspace"], "inside the workspace"),
    (["--out", "../jobs/job1/status.json.jsonl", "--overwrite"], "inside the workspace"),
    (["--out", ".", "--format", "hf", "--overwrite"], "/exports itself"),
])
def test_workspace_paths_are_refused_whatever_the_flags(ws, args, says):
    err = refused(ws, *args, says=says)
    assert str(ws.root) in err and "Nothing was written" in err


def test_absolute_workspace_path_is_refused(ws):
    refused(ws, "--out", str(ws.root), "--format", "hf", "--overwrite", "--outside-workspace",
            says=f"refusing to export to {ws.root}: it is the workspace itself")


def test_folder_outside_is_never_emptied(ws, tmp_path):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    (mine / "sub" / "data.bin").write_bytes(b"\x00\x01")
    err = refused(ws, "--out", str(mine), "--format", "hf", "--overwrite", "--outside-workspace",
                  says=f"refusing to overwrite {mine}", also=mine)
    assert "'notes.txt', which a save_to_disk export does not" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(ws, "--out", str(empty), "--format", "hf", "--overwrite", "--outside-workspace",
            says="there is no export manifest", also=empty)
    assert empty.is_dir()
    # without --outside-workspace the path is refused before anything about it is looked at
    refused(ws, "--out", str(mine / "new.jsonl"), says="is outside the workspace", also=mine)


def test_symlinks_inside_exports_are_followed_before_the_check(ws, tmp_path):
    (ws.exports_dir / "to-ws").symlink_to(ws.root, target_is_directory=True)
    refused(ws, "--out", "to-ws", "--format", "hf", "--overwrite", says="it is the workspace itself")
    refused(ws, "--out", "to-ws/datasets/d", "--format", "hf", "--overwrite", "--outside-workspace",
            says="inside the workspace")
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws.exports_dir / "to-outside").symlink_to(outside, target_is_directory=True)
    refused(ws, "--out", "to-outside/x.jsonl", says="is outside the workspace", also=outside)
    assert list(outside.iterdir()) == []


def test_symlinked_workspace_area_outside_the_root_is_protected(ws, tmp_path):
    """A workspace whose scores/ lives on another disk: that disk's folder is workspace data too."""
    elsewhere = tmp_path / "big-disk" / "scores"
    elsewhere.parent.mkdir()
    ws.scores_dir.rename(elsewhere)
    (ws.root / "scores").symlink_to(elsewhere, target_is_directory=True)
    refused(ws, "--out", str(elsewhere / "d"), "--format", "hf", "--overwrite", "--outside-workspace",
            says="holds workspace data", also=elsewhere)
    refused(ws, "--out", str(elsewhere.parent), "--format", "hf", "--overwrite", "--outside-workspace",
            says="holds workspace data", also=elsewhere.parent)


def test_a_file_that_is_not_an_export_is_refused_even_with_overwrite(ws):
    (ws.exports_dir / "notes.jsonl").write_text('{"mine": true}\n')
    refused(ws, "--out", "notes.jsonl", "--overwrite", says="there is no export manifest")
    # a manifest beside it that MarginLens did not write does not make it one
    (ws.exports_dir / "notes.jsonl.manifest.json").write_text('{"tool": "other"}\n')
    refused(ws, "--out", "notes.jsonl", "--overwrite", says="is not a MarginLens manifest")
    (ws.exports_dir / "folder.jsonl").mkdir()
    refused(ws, "--out", "folder.jsonl", "--overwrite", says="it is a folder (or not a regular file), and a jsonl")
    # without --overwrite: the usual "already exists"
    refused(ws, "--out", "first.jsonl", says="already exists; pass --overwrite")


@pytest.mark.parametrize("fmt", ["jsonl", "hf"])
def test_overwrite_replaces_a_previous_export(ws, fmt):
    out = "again.jsonl" if fmt == "jsonl" else "again"
    assert select_cli(ws, "--out", out, "--format", fmt, seed=1)[0] == 0
    path = ws.exports_dir / out
    manifest = path / HF_MANIFEST if fmt == "hf" else path.with_name(out + ".manifest.json")
    first = json.loads(manifest.read_text())
    assert first["kind"] == EXPORT_KIND
    refused(ws, "--out", out, "--format", fmt, says="already exists; pass --overwrite")
    others = snapshot(ws.root)
    code, _, err = select_cli(ws, "--out", out, "--format", fmt, "--overwrite", seed=2)
    assert code == 0, err
    second = json.loads(manifest.read_text())
    assert second["output"]["sha256"] != first["output"]["sha256"]  # another seed, other pairs
    assert second["selection"]["seed"] == 2
    if fmt == "jsonl":
        assert hashlib.sha256(path.read_bytes()).hexdigest() == second["output"]["sha256"]
    else:
        assert sorted(p.name for p in path.iterdir()) == sorted(
            ["data-00000-of-00001.arrow", "dataset_info.json", "state.json", HF_MANIFEST])
    # nothing else moved, and no temporary folder was left beside it
    after = snapshot(ws.root)
    changed = {k for k in others.keys() | after.keys() if others.get(k) != after.get(k)}
    assert all(k.startswith(f"exports/{out}") for k in changed), changed


def test_exports_written_before_the_kind_field_are_still_recognised(ws):
    manifest = ws.exports_dir / "first.jsonl.manifest.json"
    old = json.loads(manifest.read_text())
    del old["kind"]
    manifest.write_text(json.dumps(old))
    code, _, err = select_cli(ws, "--out", "first.jsonl", "--overwrite", seed=3)
    assert code == 0, err
    assert json.loads(manifest.read_text())["kind"] == EXPORT_KIND


def test_overwrite_never_swaps_a_folder_for_a_file_or_keeps_strangers(ws):
    assert select_cli(ws, "--out", "folder", "--format", "hf")[0] == 0
    refused(ws, "--out", "folder", "--format", "jsonl", "--overwrite",
            says="it is a folder (or not a regular file), and a jsonl export is a file")
    assert select_cli(ws, "--out", "plain", "--format", "jsonl")[0] == 0  # a file with no extension
    refused(ws, "--out", "plain", "--format", "hf", "--overwrite",
            says="it is a file, and a save_to_disk (hf) export is a folder")
    (ws.exports_dir / "folder" / "README.md").write_text("my notes about this subset")
    refused(ws, "--out", "folder", "--format", "hf", "--overwrite", says="'README.md', which a save_to_disk")


def test_what_appears_while_writing_is_checked_again_before_the_swap(ws):
    target = ws.exports_dir / "late.jsonl"

    def write(staged: Path) -> None:
        staged.write_text("new export\n")
        target.write_text("someone else's file\n")  # lands at the path while the export is being written

    with pytest.raises(MarginLensError, match="there is no export manifest"):
        install(target, "jsonl", True, write)
    assert target.read_text() == "someone else's file\n"
    assert sorted(p.name for p in ws.exports_dir.iterdir()) == sorted(
        ["first.jsonl", "first.jsonl.manifest.json", "late.jsonl"])


def test_a_job_writes_only_inside_its_own_results_folder(ws):
    margins = load_margins(ws, "d", policy_fp="pol")
    sel = select(margins, SelectionSpec(metric="random", ratio=0.5))
    results = ws.jobs_dir / "job1" / "results"
    done = export_selection(ws, "d", sel, margins, results / "cells" / "a.jsonl", within=results)
    assert done.path.is_file() and done.manifest_path.is_file()
    with pytest.raises(MarginLensError, match="inside the workspace"):
        export_selection(ws, "d", sel, margins, ws.jobs_dir / "job1" / "status.json.jsonl", within=results,
                         overwrite=True)
    with pytest.raises(MarginLensError, match="must lie inside the jobs folder"):
        export_selection(ws, "d", sel, margins, ws.datasets_dir / "x.jsonl", within=ws.datasets_dir)


def test_the_dashboard_never_allows_paths_outside_the_workspace():
    """allow_outside is the CLI's --outside-workspace only; no page or app module passes it."""
    offenders = [str(p.relative_to(REPO)) for folder in ("pages", "app") for p in (REPO / folder).rglob("*.py")
                 if "allow_outside" in p.read_text(encoding="utf-8")]
    assert offenders == []
