"""Import at scale: a JSONL of N HH-RLHF-sized pairs (default 1,000,000, ~800 bytes a row) through the
real importer, in a child process so its peak RSS is the import's own.

    .venv/bin/python bench/import_scale.py [--rows 1000000] [--row-bytes 800] [--keep DIR]

Prints rows/s, MB/s and the child's peak RSS against the target (issue 15, part 2): the import stays
streaming, peak RSS under 1 GB at 1M rows.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RSS_TARGET_MB = 1024

CHILD = """
import sys, time
from pathlib import Path
from marginlens.core.data.ingest import import_dataset
from marginlens.core.workspace import Workspace
start = time.perf_counter()
report = import_dataset(Path(sys.argv[1]), "scale", Workspace(Path(sys.argv[2])), policy="skip")
print(time.perf_counter() - start, report.imported)
"""


def write_source(path: Path, rows: int, row_bytes: int) -> int:
    """Standard-layout rows with explicit scores, texts padded to about `row_bytes` per line; written
    line by line, so the generator holds one row at a time."""
    filler = "The quick brown fox jumps over the lazy dog. "
    body = max(0, row_bytes - 160) // 3
    with path.open("w", encoding="utf-8") as out:
        for i in range(rows):
            text = (filler * (body // len(filler) + 1))[:body]
            out.write(json.dumps({
                "prompt": f"Question {i}: {text}", "chosen": f"Answer {i}: {text}", "rejected": f"No {i}: {text}",
                "score_chosen": (i % 97) / 10, "score_rejected": (i % 89) / 10,
            }) + "\n")
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--row-bytes", type=int, default=800)
    parser.add_argument("--keep", type=Path, help="write the source and workspace here and keep them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="marginlens-import-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        source = root / "pairs.jsonl"
        start = time.perf_counter()
        size = write_source(source, args.rows, args.row_bytes)
        print(f"source: {args.rows:,} rows, {size / 1e6:,.0f} MB written in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", CHILD, str(source), str(root / "workspace")], cwd=REPO,
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode:
            sys.exit(f"import failed:\n{done.stderr[-3000:]}")
        import_s, imported = float(done.stdout.split()[0]), int(done.stdout.split()[1])
        if imported != args.rows:
            sys.exit(f"imported {imported:,} of {args.rows:,} rows")
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        print(f"{'step':<34} {'value':>12}  target")
        print(f"{'import (in the child)':<34} {import_s:>10.1f} s")
        print(f"{'child process, start to exit':<34} {wall:>10.1f} s")
        print(f"{'rows/s':<34} {args.rows / import_s:>12,.0f}")
        print(f"{'MB/s of JSONL':<34} {size / 1e6 / import_s:>12,.1f}")
        verdict = "ok" if peak_mb < RSS_TARGET_MB else "OVER"
        print(f"{'peak RSS of the import':<34} {peak_mb:>9,.0f} MB  < {RSS_TARGET_MB} MB: {verdict}")


if __name__ == "__main__":
    main()
