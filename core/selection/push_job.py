"""The "push" job: upload a written export to the Hugging Face Hub in a worker process.

An upload takes as long as the network makes it; a dashboard script that waited for it would hold
the page. The job reads the export back as written (so what is pushed is what the manifest
describes), pushes it through core.selection.export, and records the repo in the export's manifest.
The token travels in the worker's environment only, never in the job's params.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from marginlens.core import jobs
from marginlens.core.atomic import read_json, write_json
from marginlens.core.errors import MarginLensError
from marginlens.core.selection.export import _hub_token, _push, manifest_path_for
from marginlens.core.workspace import Workspace


def _format(path: Path) -> str:
    if path.is_dir():
        return "hf"
    return "parquet" if path.suffix == ".parquet" else "jsonl"


def _read(path: Path, fmt: str) -> Any:
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
    token = _hub_token(repo_id, token)
    return jobs.submit(ws, "push", {"export": str(path), "repo_id": repo_id, "private": private},
                       env={"HF_TOKEN": token})


def run(ctx: jobs.JobContext) -> dict[str, Any]:
    """Job entry point (core.jobs.KINDS["push"])."""
    p = ctx.params
    path = Path(p["export"])
    fmt = _format(path)
    token = _hub_token(p["repo_id"], None)  # from the environment submit_push gave the worker
    table = _read(path, fmt)
    ctx.progress(0, table.num_rows, force=True)
    ctx.log(f"pushing {table.num_rows} rows of {path} to {p['repo_id']}")
    pushed = _push(table, p["repo_id"], token, bool(p["private"]))
    manifest_path = manifest_path_for(path, fmt)
    manifest = read_json(manifest_path)
    if isinstance(manifest, dict):
        write_json(manifest_path, {**manifest, "pushed_to": pushed})
    ctx.progress(table.num_rows, table.num_rows, force=True)
    return {"export": str(path), "repo_id": pushed, "rows": table.num_rows}
