"""Pushing a written export to the Hugging Face Hub: the "push" job, and the one place that pushes.

An upload takes as long as the network makes it, so it runs in a worker process, never inside a
dashboard script or an export. The job reads the export back as written (what is pushed is what the
manifest describes), pushes it, and records the repo in the export's manifest. The token travels in
the worker's environment only, never in the job's params.

Each request is its own job (its params carry the time it was made): pushing the same path again after
an `--overwrite` export must upload the new content, not return the finished job of the old one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
from marginlens.core import jobs
from marginlens.core.atomic import read_json, write_json
from marginlens.core.errors import MarginLensError
from marginlens.core.selection.export import manifest_path_for
from marginlens.core.workspace import Workspace


def hub_token(repo_id: str, token: str | None) -> str:
    """The token to push with; refuses at once when offline or without one (before anything is written)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("", "0", "false", "no"):
        raise MarginLensError(f"cannot push to {repo_id!r}: HF_HUB_OFFLINE is set (no network); export locally instead")
    token = token or os.environ.get("HF_TOKEN")
    if not token:
        raise MarginLensError(f"cannot push to {repo_id!r}: no Hub token (pass --token or set HF_TOKEN)")
    return token


def push_table(table: pa.Table, repo_id: str, token: str, private: bool) -> str:
    import datasets

    try:
        datasets.Dataset(table).push_to_hub(repo_id, token=token, private=private)
    except Exception as exc:  # network, auth, permissions: one line for the user
        raise MarginLensError(f"push to {repo_id!r} failed: {exc}") from exc
    return repo_id


def _format(path: Path) -> str:
    if path.is_dir():
        return "hf"
    return "parquet" if path.suffix == ".parquet" else "jsonl"


def _read(path: Path, fmt: str) -> pa.Table:
    if fmt == "hf":
        import datasets

        return datasets.load_from_disk(str(path)).data.table
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    import pyarrow.json as pj

    return pj.read_json(path)


def submit_push(ws: Workspace, export: str | os.PathLike, repo_id: str, private: bool = True,
                token: str | None = None) -> jobs.Job:
    """Push the export at `export` to `repo_id`; fails here, before any job, when offline or without a token."""
    path = Path(export).expanduser().resolve()
    if not path.exists():
        raise MarginLensError(f"no export at {path}")
    token = hub_token(repo_id, token)
    params = {"export": str(path), "repo_id": repo_id, "private": private, "requested_at": time.time()}
    return jobs.submit(ws, "push", params, env={"HF_TOKEN": token})


def run(ctx: jobs.JobContext) -> dict[str, Any]:
    """Job entry point (core.jobs.KINDS["push"])."""
    p = ctx.params
    path = Path(p["export"])
    fmt = _format(path)
    token = hub_token(p["repo_id"], None)  # from the environment submit_push gave the worker
    table = _read(path, fmt)
    ctx.progress(0, table.num_rows, force=True)
    ctx.log(f"pushing {table.num_rows:,} rows of {path} to {p['repo_id']}")
    pushed = push_table(table, p["repo_id"], token, bool(p["private"]))
    manifest_path = manifest_path_for(path, fmt)
    manifest = read_json(manifest_path)
    if isinstance(manifest, dict):
        write_json(manifest_path, {**manifest, "pushed_to": pushed})
    ctx.progress(table.num_rows, table.num_rows, force=True)
    return {"export": str(path), "repo_id": pushed, "rows": table.num_rows,
            "summary": f"pushed {table.num_rows:,} rows of {path} to {pushed}"}
