"""Read a preference-data source into records, one at a time, each with its row (and line) number.

A record that cannot even be decoded (a malformed JSONL line) comes back as a RowError in its
place, so the caller decides whether to stop or to skip it -- nothing is dropped silently.
"""

from __future__ import annotations

import base64
import codecs
import csv
import gzip
import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marginlens.core.errors import NotADatasetError, RowError
from marginlens.core.integrity import sha256_file as file_sha256

SUPPORTED = ".jsonl, .ndjson, .json, .parquet, .csv (each optionally .gz), a save_to_disk folder, or a Hub id"


@dataclass
class Record:
    row: int  # 0-based record index in the source
    line: int | None  # 1-based line in a text file, when there is one
    data: dict[str, Any] | None
    error: RowError | None = None
    raw: str | None = None  # the undecodable text, kept for the rejects file
    raw_base64: str | None = None  # a line that is not UTF-8: its exact bytes, for the rejects file


@dataclass
class Source:
    """An opened source: how to iterate it, how to name it, and a fingerprint of its bytes."""

    label: str
    kind: str  # jsonl | json | parquet | csv | disk | hub
    fingerprint: str
    path: Path | None = None
    hub_id: str | None = None
    split: str | None = None
    total: int | None = None


def _folder_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def _kind_from_name(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for ext, kind in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".parquet", "parquet"),
                      (".csv", "csv")):
        if name.endswith(ext):
            return kind
    return None


def _open_binary(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _open_text(path: Path) -> io.TextIOBase:
    # utf-8-sig: a byte-order mark (Excel and Notepad write one) is not part of the first field
    return io.TextIOWrapper(_open_binary(path), encoding="utf-8-sig", newline="")


def _check_text_file(path: Path, kind: str) -> None:
    """Reject empty and binary files up front with one message instead of a decoder traceback."""
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as fh:
            head = fh.read(8192)
    except (OSError, EOFError) as exc:
        raise NotADatasetError(f"{path}: cannot be read ({exc})") from None
    if not head.strip():
        raise NotADatasetError(f"{path}: the file is empty")
    if b"\x00" in head:
        raise NotADatasetError(f"{path}: binary content in a text file; not a {_kind_from_name(path)} dataset")
    if kind == "jsonl":
        return  # decoded line by line: a line in another encoding is that row's error, not the file's
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the 8 KiB boundary is fine; anything earlier is not UTF-8.
        if exc.start < len(head) - 4:
            raise NotADatasetError(f"{path}: not UTF-8 text (byte {exc.start}); not a dataset") from None


def open_source(src: str | os.PathLike, split: str | None = None) -> Source:
    path = Path(src).expanduser()
    if path.is_dir():
        if not any((path / marker).exists() for marker in ("dataset_info.json", "state.json", "dataset_dict.json")):
            raise NotADatasetError(f"{path}: a folder, but not a datasets save_to_disk folder (no dataset_info.json)")
        return Source(str(path), "disk", _folder_sha256(path), path=path, split=split)
    if path.exists():
        if not path.is_file():
            raise NotADatasetError(f"{path}: not a regular file")
        kind = _kind_from_name(path)
        if kind is None:
            raise NotADatasetError(f"{path}: unsupported file type '{path.suffix or path.name}'; supported: {SUPPORTED}")
        if path.stat().st_size == 0:
            raise NotADatasetError(f"{path}: the file is empty")
        if kind != "parquet":
            _check_text_file(path, kind)
        return Source(str(path), kind, file_sha256(path), path=path)
    if "/" in str(src) and not str(src).startswith((".", "/", "~")) and str(src).count("/") == 1:
        return Source(str(src), "hub", f"hub:{src}:{split or 'train'}", hub_id=str(src), split=split or "train")
    raise NotADatasetError(f"{src}: no such file or folder (and not a Hub id of the form owner/name)")


def iter_records(source: Source) -> Iterator[Record]:
    reader = {"jsonl": _iter_jsonl, "json": _iter_json, "parquet": _iter_parquet, "csv": _iter_csv,
              "disk": _iter_disk, "hub": _iter_hub}[source.kind]
    yield from reader(source)


def _row_error(source: Source, row: int, line: int | None, field: str, reason: str, message: str,
               raw: Any = None) -> Record:
    error = RowError(source.label, row, field, reason, message, line=line)
    return Record(row, line, None, error, raw=None if raw is None else str(raw))


def _iter_jsonl(source: Source) -> Iterator[Record]:
    """Lines are split as bytes and decoded one by one, so one line in another encoding is one bad row."""
    row = 0
    with _open_binary(source.path) as fh:
        for line_no, raw_line in enumerate(fh, start=1):
            if line_no == 1 and raw_line.startswith(codecs.BOM_UTF8):
                raw_line = raw_line[len(codecs.BOM_UTF8):]
            if not raw_line.strip():
                continue
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                record = _row_error(source, row, line_no, "<line>", "bad_encoding",
                                    f"not UTF-8 (byte {exc.start} of the line: {raw_line[exc.start:exc.start + 1]!r})",
                                    raw=raw_line.rstrip(b"\r\n").decode("utf-8", "backslashreplace"))
                record.raw_base64 = base64.b64encode(raw_line.rstrip(b"\r\n")).decode("ascii")
                yield record
                row += 1
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                yield _row_error(source, row, line_no, "<json>", "malformed_json", f"{exc.msg} at column {exc.colno}",
                                 raw=line.rstrip("\r\n"))
            else:
                if isinstance(data, dict):
                    yield Record(row, line_no, data)
                else:
                    yield _row_error(source, row, line_no, "<json>", "malformed_json",
                                     f"expected a JSON object, got {type(data).__name__}", raw=line.rstrip("\r\n"))
            row += 1


def _iter_json(source: Source) -> Iterator[Record]:
    try:
        with _open_text(source.path) as fh:
            text = fh.read()
    except UnicodeDecodeError as exc:
        raise NotADatasetError(f"{source.label}: not UTF-8 text (byte {exc.start}); not a dataset") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            # Several objects one after another: a JSONL file with a .json name.
            yield from _iter_jsonl(source)
            return
        raise NotADatasetError(f"{source.label}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            data = lists[0]
        else:
            raise NotADatasetError(f"{source.label}: expected a JSON list of records (or an object holding one list)")
    if not isinstance(data, list):
        raise NotADatasetError(f"{source.label}: expected a JSON list of records, got {type(data).__name__}")
    if not data:
        raise NotADatasetError(f"{source.label}: the JSON list is empty")
    source.total = len(data)
    for row, item in enumerate(data):
        if isinstance(item, dict):
            yield Record(row, None, item)
        else:
            yield _row_error(source, row, None, "<json>", "malformed_json",
                             f"expected a JSON object, got {type(item).__name__}", raw=json.dumps(item))


def _iter_parquet(source: Source) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(source.path)
    except Exception as exc:  # pyarrow raises several types for a file that is not parquet
        raise NotADatasetError(f"{source.label}: not a readable Parquet file ({exc})") from None
    source.total = file.metadata.num_rows
    row = 0
    for batch in file.iter_batches(batch_size=4096):
        for item in batch.to_pylist():
            yield Record(row, None, item)
            row += 1


def _maybe_json_cell(value: str) -> Any:
    """CSV has no lists: conversational columns arrive as JSON text."""
    stripped = value.strip()
    if stripped[:1] in "[{":
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return value
    return value


def _iter_csv(source: Source) -> Iterator[Record]:
    with _open_text(source.path) as fh:
        try:
            reader = csv.DictReader(fh)
            header = reader.fieldnames
        except csv.Error as exc:
            raise NotADatasetError(f"{source.label}: not a readable CSV file ({exc})") from None
        if not header:
            raise NotADatasetError(f"{source.label}: the CSV file has no header row")
        row = 0
        while True:
            try:
                item = next(reader)
            except StopIteration:
                break
            except UnicodeDecodeError:
                raise NotADatasetError(f"{source.label}: not UTF-8 text after line {reader.line_num} "
                                       "(a CSV file is decoded as a whole; save it as UTF-8)") from None
            except csv.Error as exc:
                yield _row_error(source, row, reader.line_num, "<csv>", "malformed_csv", str(exc))
                row += 1
                continue
            if None in item:
                yield _row_error(source, row, reader.line_num, "<csv>", "malformed_csv",
                                 f"{len(item[None])} more cells than header columns", raw=json.dumps(item, default=str))
            else:
                yield Record(row, reader.line_num, {k: _maybe_json_cell(v) for k, v in item.items()})
            row += 1


def _iter_dataset(source: Source, dataset: Any) -> Iterator[Record]:
    source.total = len(dataset)
    for row, item in enumerate(dataset):
        yield Record(row, None, item)


def _pick_split(source: Source, obj: Any) -> Any:
    import datasets

    if isinstance(obj, datasets.DatasetDict):
        split = source.split or ("train" if "train" in obj else None)
        if split is None and len(obj) == 1:
            split = next(iter(obj))
        if split not in obj:
            raise NotADatasetError(f"{source.label}: choose a split with --split (available: {', '.join(obj)})")
        source.split = split
        return obj[split]
    return obj


def _iter_disk(source: Source) -> Iterator[Record]:
    import datasets

    try:
        obj = datasets.load_from_disk(str(source.path))
    except Exception as exc:
        raise NotADatasetError(f"{source.label}: cannot load the save_to_disk folder ({exc})") from None
    yield from _iter_dataset(source, _pick_split(source, obj))


def _iter_hub(source: Source) -> Iterator[Record]:
    import datasets

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise NotADatasetError(f"{source.label}: looks like a Hub id, but HF_HUB_OFFLINE=1 (offline); download it first")
    try:
        dataset = datasets.load_dataset(source.hub_id, split=source.split)
    except Exception as exc:
        raise NotADatasetError(f"{source.label}: cannot load from the Hub ({type(exc).__name__}: {exc})") from None
    source.fingerprint = f"hub:{source.hub_id}:{source.split}:{dataset._fingerprint}"
    yield from _iter_dataset(source, dataset)
