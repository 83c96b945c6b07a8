"""What the Export page hands to the browser: the written export as one downloadable file, and the
page's own wording for the export errors whose core text names CLI flags."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from marginlens.core.errors import MarginLensError
from marginlens.core.selection.export import ExportExists, OutsideWorkspace
from marginlens.core.selection.export_target import not_an_export
from marginlens.core.workspace import Workspace

MIME = {".jsonl": "application/jsonl", ".parquet": "application/vnd.apache.parquet"}


def download_payload(path: str | Path) -> tuple[bytes, str, str]:
    """(bytes, file name, MIME type) of an export: the file itself, or a save_to_disk folder zipped
    (with its manifest inside) under the folder's name."""
    path = Path(path)
    if path.is_dir():
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                archive.write(file, Path(path.name) / file.relative_to(path))
        return buffer.getvalue(), f"{path.name}.zip", "application/zip"
    try:
        return path.read_bytes(), path.name, MIME.get(path.suffix.lower(), "application/octet-stream")
    except FileNotFoundError:
        raise MarginLensError(f"{path} is gone (moved or deleted since it was written)") from None


def workspace_exports(ws: Workspace, limit: int = 200) -> list[Path]:
    """The MarginLens exports under the workspace's exports/ (a manifest recognises each; anything else a
    user put there is not offered), newest first."""
    root = ws.exports_dir
    if not root.is_dir():
        return []
    found = []
    for manifest in root.rglob("*manifest.json"):
        if manifest.name == "marginlens_manifest.json":
            path, fmt = manifest.parent, "hf"
        elif manifest.name.endswith(".manifest.json"):
            path = manifest.with_name(manifest.name[: -len(".manifest.json")])
            fmt = path.suffix.lstrip(".").lower()
        else:
            continue
        if fmt in ("jsonl", "parquet", "hf") and not_an_export(path, fmt) is None:
            found.append(path)
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)[:limit]


def page_error(exc: MarginLensError) -> str:
    """The error as the page says it: its toggles instead of the CLI's flags."""
    if isinstance(exc, ExportExists):
        return (f"{exc.path} already exists; turn on 'Overwrite an existing export' to replace it (only a previous "
                "MarginLens export is replaced), or change the path.")
    if isinstance(exc, OutsideWorkspace):
        return (f"{exc.path} is outside the workspace: the dashboard writes exports only under "
                f"{exc.root / 'exports'}. Give a relative path, or write elsewhere from the command line "
                "(marginlens select ... --outside-workspace).")
    return str(exc)


def default_name(dataset: str, metric: str, ratio: float, fmt: str, brushed: bool) -> str:
    """The export's suggested name: what was selected, from where, in which format."""
    stem = f"{dataset}-{metric}-{int(round(ratio * 100))}pct" + ("-scatter" if brushed else "")
    return stem + ("" if fmt == "hf" else f".{fmt}")
