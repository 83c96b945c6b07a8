"""`transformers serve` (the transformers[serving] extra) on a free port of 127.0.0.1, pinned to one model
folder, waited on until /health answers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from helpers_browser import free_port


@contextmanager
def transformers_serve(folder: str | os.PathLike, log: Path, ready_timeout: float = 180) -> Iterator[str]:
    """Yields the server's OpenAI base URL; the server answers only to the model name `str(folder)`."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("transformers")), "serve", str(folder),
               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    with open(log, "wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, f"transformers serve exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"transformers serve not healthy: {log.read_text()[-2000:]}"
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
