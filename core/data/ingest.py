"""Import a preference dataset into the workspace: read, detect the layout, validate, store.

One entry point, `import_dataset`. Every bad row is either the error that stops the import
(policy "strict") or a line in the rejects file with its row, field and reason (policy "skip").
The stored table is written beside the old one and switched in by an atomic manifest rename, so a
crash at any point leaves the previous import intact.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from marginlens.core import __version__
from marginlens.core.atomic import write_json, write_text
from marginlens.core.data.formats import (
    CANONICAL_FIELDS,
    FORMATS,
    FieldError,
    apply_mapping,
    detect_format,
    parse_record,
)
from marginlens.core.data.pairs import SCHEMA, make_row
from marginlens.core.data.sources import Record, Source, iter_records, open_source
from marginlens.core.errors import MarginLensError, RowError
from marginlens.core.integrity import DamagedFile, sha256_file
from marginlens.core.workspace import Workspace, check_name

Policy = Literal["strict", "skip"]
BATCH_ROWS = 2048
PROGRESS_ROWS = 1000
REJECTS_FILE = "rejects.jsonl"
MAX_WARNINGS_KEPT = 1000


@dataclass
class ImportReport:
    name: str
    format: str
    rows_read: int
    imported: int
    rejected: dict[str, int] = field(default_factory=dict)
    warnings: int = 0
    rejects_path: Path | None = None
    unchanged: bool = False
    manifest: dict[str, Any] = field(default_factory=dict)
    flagged: dict[str, int] = field(default_factory=dict)  # kept pairs per ingest flag (empty_response, ...)

    def summary(self) -> str:
        if self.unchanged:
            return f"{self.name}: already imported from the same source with the same options (no-op), {self.imported:,} pairs"
        lines = [f"{self.name}: imported {self.imported:,} of {self.rows_read:,} rows as {self.format}"]
        for reason, count in sorted(self.rejected.items()):
            lines.append(f"  skipped {count:>6,}  {reason}")
        for flag, count in sorted(self.flagged.items()):
            lines.append(f"  kept    {count:>6,}  flagged {flag}")
        if self.rejects_path:
            lines.append(f"  skipped rows written to {self.rejects_path}")
        if self.warnings:
            lines.append(f"  {self.warnings:,} rows kept with warnings (see `marginlens info {self.name}`)")
        return "\n".join(lines)


def parse_mapping(text: str | None) -> dict[str, str]:
    """'prompt=question,chosen=good' -> {'prompt': 'question', 'chosen': 'good'}."""
    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not value.strip():
            raise MarginLensError(f"bad --map entry {item!r}: expected FIELD=COLUMN")
        if key.strip() not in CANONICAL_FIELDS:
            raise MarginLensError(f"bad --map field {key!r}: expected one of {', '.join(CANONICAL_FIELDS)}")
        mapping[key.strip()] = value.strip()
    return mapping


class _Validator:
    """Holds what row checks need across rows (duplicates, the detected layout)."""

    def __init__(self, source: Source, fmt: str | None, mapping: dict[str, str], max_prompt_chars: int | None,
                 allow_empty: bool):
        self.source = source
        self.format = fmt
        self.mapping = mapping
        self.max_prompt_chars = max_prompt_chars
        self.allow_empty = allow_empty
        self.seen: dict[str, int] = {}
        self.columns: list[str] | None = None

    def row(self, record: Record) -> tuple[dict[str, Any], str | None]:
        """The canonical row and an optional warning; raises RowError for a bad record."""
        if record.error is not None:
            raise record.error
        try:
            data = apply_mapping(record.data, self.mapping)
            if self.format is None:
                self.format = detect_format(data)
            if self.columns is None:
                self.columns = list(record.data)
            pair = parse_record(self.format, data, allow_empty=self.allow_empty)
            prompt_chars = sum(len(m["content"]) for m in pair.prompt)
            if self.max_prompt_chars is not None and prompt_chars > self.max_prompt_chars:
                raise FieldError("prompt", "prompt_too_long", f"{prompt_chars} characters > limit {self.max_prompt_chars}")
            if pair.chosen == pair.rejected:
                raise FieldError("rejected", "identical_responses", "chosen and rejected responses are identical")
        except FieldError as exc:
            raise RowError(self.source.label, record.row, exc.field, exc.reason, exc.message, line=record.line) from None
        row = make_row(record.row, pair.prompt, pair.chosen, pair.rejected, record.data,
                       pair.score_chosen, pair.score_rejected, pair.flags)
        first = self.seen.setdefault(row["pair_id"], record.row)
        if first != record.row:
            raise RowError(self.source.label, record.row, "pair", "duplicate_pair",
                           f"same prompt, chosen and rejected as row {first}", line=record.line)
        return row, pair.warning


def _options(fmt: str | None, mapping: dict[str, str], policy: str, max_prompt_chars: int | None,
             allow_empty: bool, split: str | None) -> dict[str, Any]:
    return {"format": fmt or "auto", "mapping": mapping, "policy": policy, "max_prompt_chars": max_prompt_chars,
            "allow_empty_responses": allow_empty, "split": split}


def import_dataset(
    source: str | Path,
    name: str,
    workspace: Workspace,
    *,
    format: str | None = None,
    mapping: dict[str, str] | None = None,
    policy: Policy = "strict",
    max_prompt_chars: int | None = None,
    allow_empty_responses: bool = True,
    split: str | None = None,
    replace: bool = False,
    progress: bool | Callable[[int, int | None], None] = False,
) -> ImportReport:
    """Import `source` (file, save_to_disk folder or Hub id) as dataset `name` in `workspace`.

    `progress`: True draws a terminal bar; a function is called with (rows read, rows in the source or
    None) every PROGRESS_ROWS rows, and may raise to stop the import (nothing is switched in then)."""
    check_name(name)
    if format in (None, "auto"):
        format = None
    elif format not in FORMATS:
        raise MarginLensError(f"unknown format {format!r}; expected auto or one of {', '.join(FORMATS)}")
    if policy not in ("strict", "skip"):
        raise MarginLensError(f"unknown policy {policy!r}; expected strict or skip")
    mapping = dict(mapping or {})
    opened = open_source(source, split=split)
    options = _options(format, mapping, policy, max_prompt_chars, allow_empty_responses, split)

    dataset_dir = workspace.dataset_dir(name)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    with _import_lock(dataset_dir):
        old, intact = _existing(workspace, name, replace)
        if old is not None:
            if intact and _unchanged(old, opened.fingerprint, options):
                return _unchanged_report(name, old)
            # A Hub source's fingerprint is only known after loading: the same id is a refresh.
            refresh = opened.kind == "hub" and old.get("source") == opened.label and old.get("options") == options
            if not (replace or refresh or (not intact and _unchanged(old, opened.fingerprint, options))):
                raise MarginLensError(f"dataset {name!r} already exists from another source or with other options; "
                                      "pass --replace to replace it, or choose another --name")
        tmp = Path(tempfile.mkdtemp(prefix=".import-", dir=dataset_dir))
        try:
            report = _import_into(tmp, opened, name, format, mapping, policy, max_prompt_chars,
                                  allow_empty_responses, progress)
            if old is not None and intact and _unchanged(old, opened.fingerprint, options):
                return _unchanged_report(name, old)
            fingerprint = hashlib.sha256(json.dumps([opened.fingerprint, options, SCHEMA.to_string()],
                                                    sort_keys=True).encode()).hexdigest()
            # A fresh folder name every time: the folder the current manifest points at is never touched.
            data_name = f"data-{fingerprint[:16]}-{uuid.uuid4().hex[:8]}"
            tmp.rename(dataset_dir / data_name)
            report.manifest.update({
                "name": name,
                "source": str(Path(source).expanduser().resolve()) if opened.path else opened.label,
                "source_kind": opened.kind,
                "source_fingerprint": opened.fingerprint,
                "split": opened.split,
                "fingerprint": fingerprint,
                "options": options,
                "data": data_name,
                "pairs_sha256": sha256_file(dataset_dir / data_name / "pairs.arrow"),  # checked by `marginlens doctor`
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "tool_version": __version__,
            })
            write_json(workspace.manifest_path(name), report.manifest)  # the switch: one atomic rename
            workspace.prune_dataset(name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    report.rejects_path = workspace.rejects_path(name) if report.rejected else None
    return report


def _existing(workspace: Workspace, name: str, replace: bool) -> tuple[dict[str, Any] | None, bool]:
    """The current manifest of `name` (None: no dataset yet) and whether its data is all there and reads
    back as written: a no-op import must not keep a dataset whose pairs.arrow is gone or damaged."""
    if not workspace.has_dataset(name):
        return None, False
    try:
        manifest = workspace.dataset_manifest(name)
    except DamagedFile as exc:
        if not replace:
            raise MarginLensError(f"dataset {name!r} is damaged ({exc}); pass --replace to import it again from "
                                  "this source") from None
        return None, False  # nothing of it can be trusted: imported afresh
    try:
        workspace.verify_dataset(name)
    except DamagedFile:
        return manifest, False
    return manifest, True


def _unchanged(old: dict[str, Any], source_fingerprint: str, options: dict[str, Any]) -> bool:
    return old.get("source_fingerprint") == source_fingerprint and old.get("options") == options


def _unchanged_report(name: str, old: dict[str, Any]) -> ImportReport:
    return ImportReport(name, old["format"], old["rows"]["read"], old["rows"]["imported"], old.get("rejects", {}),
                        old.get("warnings_total", 0), None, True, old, old.get("flagged", {}))


@contextmanager
def _import_lock(dataset_dir: Path):
    """One import per dataset at a time (the UI and the CLI may both try)."""
    with open(dataset_dir / ".import.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _import_into(folder: Path, opened: Source, name: str, format: str | None, mapping: dict[str, str],
                 policy: Policy, max_prompt_chars: int | None, allow_empty: bool,
                 progress: bool | Callable[[int, int | None], None]) -> ImportReport:
    """Read, validate and write pairs.arrow (and rejects.jsonl) into `folder`; the manifest is the caller's."""
    validator = _Validator(opened, format, mapping, max_prompt_chars, allow_empty)
    rejects: list[dict[str, Any]] = []
    warnings: list[dict[str, Any]] = []
    rows_read = imported = 0
    flagged: Counter[str] = Counter()
    has_scores = False
    batch: list[dict[str, Any]] = []
    with pa.OSFile(str(folder / "pairs.arrow"), "wb") as sink, pa.ipc.new_stream(sink, SCHEMA) as writer:
        for record in _progress(iter_records(opened), opened, progress):
            rows_read += 1
            try:
                row, warning = validator.row(record)
            except RowError as exc:
                if policy == "strict":
                    raise _with_hint(exc, allow_empty) from None
                rejects.append({**exc.to_dict(), "record": record.data if record.data is not None else record.raw,
                                **({"raw_base64": record.raw_base64} if record.raw_base64 else {})})
                continue
            if warning:
                warnings.append({"row": record.row, "line": record.line, "message": warning})
            batch.append(row)
            flagged.update(row["flags"])
            has_scores = has_scores or row["score_chosen"] is not None
            imported += 1
            if len(batch) >= BATCH_ROWS:
                writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=SCHEMA))
                batch = []
        if batch:
            writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=SCHEMA))
    if rows_read == 0:
        raise MarginLensError(f"{opened.label}: no records found")
    if imported == 0:
        reasons = Counter(r["reason"] for r in rejects).most_common()
        raise MarginLensError(f"{opened.label}: none of the {rows_read} rows is a valid pair ({reasons})")
    counts = dict(sorted(Counter(r["reason"] for r in rejects).items()))
    if rejects:
        # Inside the new data folder: it switches in with the pairs, never ahead of them.
        write_text(folder / REJECTS_FILE, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n"
                                                  for r in rejects))
    manifest = {
        "format": validator.format,
        "columns": validator.columns,
        "rows": {"read": rows_read, "imported": imported, "rejected": len(rejects)},
        "rejects": counts,
        "rejects_file": REJECTS_FILE if rejects else None,
        "has_scores": has_scores,
        "warnings": warnings[:MAX_WARNINGS_KEPT],
        "warnings_total": len(warnings),
        "flagged": dict(sorted(flagged.items())),
    }
    return ImportReport(name, validator.format, rows_read, imported, counts, len(warnings), None, False, manifest,
                        dict(sorted(flagged.items())))


def _with_hint(error: RowError, allow_empty: bool) -> RowError:
    """The strict policy's error, naming the option that would let the row in (or past)."""
    hints = []
    if error.reason == "empty_content" and error.field != "prompt" and not allow_empty:
        hints.append("empty responses are kept and flagged empty_response with --empty-responses keep "
                     "(the default; Data page: Empty responses 'keep and flag')")
    elif error.reason == "prompt_too_long":
        hints.append("--max-prompt-chars sets the limit")
    hints.append("--policy skip imports the other rows and writes this one to the rejects file")
    return RowError(error.source, error.row, error.field, error.reason, f"{error.message} ({'; '.join(hints)})",
                    line=error.line)


def _progress(records: Iterable[Record], source: Source, enabled: bool | Callable[[int, int | None], None]):
    if callable(enabled):
        return _reporting(records, source, enabled)
    if not enabled:
        return records
    from tqdm import tqdm

    # delay: only draw a bar for imports that take more than a second
    return tqdm(records, total=source.total, unit=" rows", delay=1.0, desc=f"import {Path(source.label).name}")


def _reporting(records: Iterable[Record], source: Source, report: Callable[[int, int | None], None]) -> Iterator[Record]:
    count = 0
    report(count, source.total)
    for record in records:
        yield record
        count += 1
        if count % PROGRESS_ROWS == 0:
            report(count, source.total)
    report(count, source.total)
