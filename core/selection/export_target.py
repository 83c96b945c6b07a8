"""Where an export may be written, and what an overwrite may replace: the one trust decision every
export goes through (CLI, Export page, the experiment lab), so a typed path can never reach the
workspace's own data.

The rules, for an output PATH (symlinks resolved first, so a link cannot smuggle a path past them):
  - PATH lies inside the workspace's exports/ folder (a relative PATH is placed there). A job may name
    its own results folder instead (`within`), which must lie inside the workspace's jobs/.
  - `allow_outside` (the CLI's --outside-workspace; the dashboard never passes it) also admits a PATH
    outside the workspace. Never admitted: the workspace itself, a folder holding it, the exports
    folder itself, or anything in the workspace outside exports/ (datasets, scores, jobs, audits, runs,
    models), including where a symlinked area of the workspace really lives.
  - An existing PATH is replaced only with `overwrite`, and only when it is a previous MarginLens export
    of the same kind: a file with PATH.manifest.json beside it, or a save_to_disk folder holding only
    its own files and marginlens_manifest.json. The manifest says "kind": "marginlens-export"; exports
    written before that field existed are recognised by "tool": "marginlens" with an "output" record.
    Anything else is refused, whatever the flags say.
  - The new export is written beside PATH and renamed over it; the target is checked again just before
    the rename, so nothing but a recognised export is ever moved aside and deleted.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from marginlens.core.atomic import atomic_path
from marginlens.core.errors import MarginLensError
from marginlens.core.workspace import Workspace

HF_MANIFEST = "marginlens_manifest.json"
EXPORT_KIND = "marginlens-export"
# What datasets' save_to_disk writes, plus our manifest: a folder holding anything else is not only an export.
_HF_FILES = re.compile(r"(state\.json|dataset_info\.json|data-\d+-of-\d+\.arrow|" + re.escape(HF_MANIFEST) + ")")


class ExportExists(MarginLensError):
    """The output path (or its manifest) exists and replacing it was not asked for."""

    def __init__(self, path: Path):
        super().__init__(f"{path} already exists; pass --overwrite to replace it (only a previous MarginLens "
                         "export is ever replaced)")
        self.path = path


class OutsideWorkspace(MarginLensError):
    """The output path is outside the workspace and writing there was not allowed."""

    def __init__(self, path: Path, root: Path):
        super().__init__(f"{path} is outside the workspace {root}; pass --outside-workspace (allow_outside=True) "
                         "to write there")
        self.path = path
        self.root = root


class ProtectedPath(MarginLensError):
    """The output path is, holds, or lies inside a part of the workspace that exports must not touch."""

    def __init__(self, path: Path, why: str, home: Path):
        super().__init__(f"refusing to export to {path}: {why}. Nothing was written, and no option allows this; "
                         f"exports go inside {home} (a relative path is placed there)")
        self.path = path


class NotAnExport(MarginLensError):
    """Overwrite was asked for, but what is at the path is not a previous MarginLens export."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"refusing to overwrite {path}: {why}, so it is not a previous MarginLens export. "
                         "Overwrite replaces only an export written at that path (recognised by its manifest); "
                         "nothing was written: choose another path, or move it away yourself")
        self.path = path


def manifest_path_for(path: Path, fmt: str) -> Path:
    return path / HF_MANIFEST if fmt == "hf" else path.with_name(path.name + ".manifest.json")


def _within(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def _home(ws: Workspace, within: Path | None, allow_outside: bool) -> Path:
    if within is None:
        return ws.exports_dir.resolve()
    home = Path(within).resolve()
    jobs = ws.jobs_dir.resolve()
    if allow_outside or home == jobs or not home.is_relative_to(jobs):
        raise MarginLensError(f"an export's own folder {home} must lie inside the jobs folder {jobs}, and admits "
                              "no path outside it")
    return home


def resolve_output(ws: Workspace, out: str | os.PathLike, fmt: str, allow_outside: bool, overwrite: bool,
                   within: Path | None = None) -> Path:
    """The resolved path the export goes to, or the error saying why it may not (module docstring)."""
    home = _home(ws, within, allow_outside)
    given = Path(out).expanduser()
    path = (given if given.is_absolute() else home / given).resolve()
    if _within(ws.root, path):
        why = "it is the workspace itself" if path == ws.root else f"it holds the workspace {ws.root}"
        raise ProtectedPath(path, why, home)
    if _within(home, path):
        raise ProtectedPath(path, f"it is {home} itself" if path == home else f"it holds {home}", home)
    if not path.is_relative_to(home):
        if path.is_relative_to(ws.root):
            raise ProtectedPath(path, f"it is inside the workspace {ws.root} but outside {home}, where "
                                      "MarginLens keeps its datasets, scores and jobs", home)
        if not allow_outside:
            raise OutsideWorkspace(path, ws.root)
    for area in _workspace_areas(ws, home):
        if _within(path, area) or _within(area, path):
            raise ProtectedPath(path, f"{area} holds workspace data (a symlinked part of {ws.root})", home)
    check_target(path, fmt, overwrite)
    return path


def _workspace_areas(ws: Workspace, home: Path) -> list[Path]:
    """Where the workspace's folders really are: a symlinked datasets/ or scores/ lives outside the root."""
    areas = []
    for entry in ws.root.iterdir():
        real = entry.resolve()
        if not _within(home, real):  # exports/ is where writes go, wherever it really is
            areas.append(real)
    return areas


def check_target(path: Path, fmt: str, overwrite: bool) -> None:
    """Nothing at `path` (nor its manifest), or, with `overwrite`, a previous export there to replace."""
    manifest = manifest_path_for(path, fmt)
    present = [p for p in ((path,) if fmt == "hf" else (path, manifest)) if p.exists() or p.is_symlink()]
    if not present:
        return
    if not overwrite:
        raise ExportExists(present[0])
    why = not_an_export(path, fmt)
    if why:
        raise NotAnExport(path, why)


def not_an_export(path: Path, fmt: str) -> str | None:
    """Why what is at `path` is not a previous export of format `fmt` to replace (None: it is one)."""
    manifest = manifest_path_for(path, fmt)
    if fmt == "hf":
        if path.is_symlink() or not path.is_dir():
            return "it is a file, and a save_to_disk (hf) export is a folder"
        others = sorted(p.name for p in path.iterdir() if not (_HF_FILES.fullmatch(p.name) and p.is_file()
                                                               and not p.is_symlink()))
        if others:
            return f"it holds {others[0]!r}, which a save_to_disk export does not"
    elif path.exists() or path.is_symlink():
        if path.is_symlink() or not path.is_file():
            return f"it is a folder (or not a regular file), and a {fmt} export is a file"
    if manifest.is_symlink() or not manifest.is_file():
        return f"there is no export manifest {manifest}"
    try:
        record = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"{manifest} is not a MarginLens manifest (not JSON)"
    return _manifest_problem(record, fmt, manifest)


def _manifest_problem(record: Any, fmt: str, manifest: Path) -> str | None:
    if not isinstance(record, dict) or record.get("tool") != "marginlens":
        return f"{manifest} is not a MarginLens manifest"
    output = record.get("output")
    kind = record.get("kind")
    if kind not in (EXPORT_KIND, None) or not isinstance(output, dict):
        return f"{manifest} is a MarginLens manifest of something else ({kind or 'no output record'})"
    written = output.get("format")
    if (written == "hf") != (fmt == "hf") or written not in ("jsonl", "parquet", "hf"):
        return f"{manifest} records a {written} export, which a {fmt} export cannot replace"
    return None


def install(path: Path, fmt: str, overwrite: bool, write: Callable[[Path], None]) -> None:
    """Run `write(staged)` on a temporary path beside `path`, then rename the result over `path`. The
    target is checked again right before the rename: what sits there may have changed while writing."""
    with atomic_path(path) as staged:
        write(staged)
        check_target(path, fmt, overwrite)
