"""Where the Data page keeps an uploaded file, and which Hub ids it accepts: names MarginLens makes, never the
browser's. A browser may send any file name (`/etc/cron.d/x`, `../../x`); here it is only a label and the
source of a suggested dataset name, and the file lands under uploads/ as the hash of its content."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from marginlens.core.atomic import write_bytes
from marginlens.core.errors import MarginLensError
from marginlens.core.workspace import Workspace

# What the importer reads from a file (core.data.sources), gzipped or not; parquet compresses itself.
SUFFIXES = (".jsonl.gz", ".json.gz", ".csv.gz", ".jsonl", ".json", ".parquet", ".csv")
UPLOAD_TYPES = ["jsonl", "json", "parquet", "csv", "gz"]  # what the browser's file picker offers
DIGEST_CHARS = 24
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def suffix_of(browser_name: str) -> str:
    """The file's type from the end of the name the browser sent: one of SUFFIXES, anything else refused."""
    name = (browser_name or "").strip().lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise MarginLensError(f"upload {label(browser_name)!r}: the importer reads {', '.join(SUFFIXES)} files; "
                          "rename it to one of those, or convert it")


def label(browser_name: str) -> str:
    """The browser's name, for showing only: its last part, without control characters."""
    last = (browser_name or "").replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[\x00-\x1f\x7f]", "", last)[:200] or "upload"


def store_upload(ws: Workspace, browser_name: str, data: bytes) -> Path:
    """Write the uploaded bytes to uploads/<sha256 prefix of the content><suffix>; the same file uploaded
    twice is the same path (written again, atomically)."""
    suffix = suffix_of(browser_name)
    target = ws.root / "uploads" / f"{hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]}{suffix}"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(target, data)
    return target


def hub_id(text: str) -> str:
    """An `owner/name` Hub dataset id; anything that is, or could be read as, a path on this server is refused
    (the importer reads an existing path before it asks the Hub)."""
    text = text.strip()
    if not _HUB_ID.match(text) or ".." in text or Path(text).exists():
        raise MarginLensError(f"Hub id {text!r}: expected owner/name (letters, digits, '-', '_', '.'); a file on the "
                              "server goes through 'Path on the server', a file of yours through 'Upload a file'")
    return text
