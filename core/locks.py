"""An exclusive lock a background job waits for without blocking its cancel flag.

The kernel drops a flock when its holder dies, so a killed job never blocks the next one. The lock is
released with LOCK_UN before the file is closed: a child forked inside the body (a DataLoader worker)
inherits the descriptor and would otherwise keep the lock for as long as it lives.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Held:
    fd: int  # the lock file, open for writing (a holder may note who it is)
    waited: bool  # whether another holder made this one wait


@contextmanager
def exclusive(path: Path, *, on_wait: Callable[[], None], check_cancel: Callable[[], None],
              poll: float = POLL_SECONDS) -> Iterator[Held]:
    """Hold an exclusive flock on `path` for the body. While another process holds it: `on_wait()` once,
    then `check_cancel()` every `poll` seconds (it raises to give up)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    on_wait()
                    waited = True
                check_cancel()
                time.sleep(poll)
        try:
            yield Held(fd, waited)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
