"""An append-only JSONL file holding one record per key, written exactly once across threads and processes.

The audit's verdicts and the LLM-rating scorer's ratings are both answers someone paid for: a record is
appended under an exclusive flock on the file after re-reading what other writers appended, so a key is
never stored twice, and a crash loses at most the line being written (a torn last line is terminated by
the next writer and skipped by readers).
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

Record = dict[str, Any]


def first_wins(record: Record, stored: Record | None) -> bool:
    return stored is None


class KeyedLog:
    """`key_of(record)` names a record's key; `supersedes(new, stored)` says whether `new` replaces what is
    stored for its key (default: never, the first record stands)."""

    def __init__(self, path: str | os.PathLike, key_of: Callable[[Record], Hashable],
                 supersedes: Callable[[Record, Record | None], bool] = first_wins):
        self.path = Path(path)
        self.key_of = key_of
        self.supersedes = supersedes
        self._records: dict[Hashable, Record] = {}
        self._offset = 0  # bytes of the file already parsed into _records
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        """Parse complete lines appended since the last read (by this or any other process)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n") + 1  # a torn last line (no newline yet) is left for later
        for line in chunk[:end].splitlines():
            try:
                record = json.loads(line)
                key = self.key_of(record)
            except (ValueError, KeyError, TypeError):
                continue  # the tail of a torn line, terminated by a later writer
            if self.supersedes(record, self._records.get(key)):
                self._records[key] = record
        self._offset += end

    def records(self) -> list[Record]:
        with self._lock:
            self._refresh()
            return list(self._records.values())

    def keys(self) -> set[Hashable]:
        with self._lock:
            self._refresh()
            return set(self._records)

    def get(self, key: Hashable) -> Record | None:
        with self._lock:
            self._refresh()
            return self._records.get(key)

    def __len__(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._records)

    def append(self, record: Record) -> bool:
        """Store `record` durably unless `supersedes` says the stored one stands; True if it was written."""
        key = self.key_of(record)
        line = json.dumps(record, ensure_ascii=False, sort_keys=True, default=str).encode("utf-8") + b"\n"
        if b"\n" in line[:-1]:
            raise ValueError("a record must serialise to one line")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._refresh()
                if not self.supersedes(record, self._records.get(key)):
                    return False
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # terminate a line torn by a crashed writer
                os.write(fd, line)
                os.fsync(fd)
                self._records[key] = record
                # Our own line is parsed already; skip it on the next refresh unless others wrote first.
                if self._offset == size:
                    self._offset = size + len(line)
            finally:
                os.close(fd)  # closing drops the flock
        return True
