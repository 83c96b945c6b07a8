"""The "import" job: core.data.ingest.import_dataset in a worker process.

A large file or a Hub download takes minutes; run inside a dashboard script it would hold the page
(and die with the tab). As a job it survives a refresh, shows progress, and can be cancelled: a
cancelled import switches nothing in, as any failed import.

Each request is its own job (its params carry the time it was made): importing the same file again,
say after another import replaced the dataset, must import it again, not return the finished job of
the first time. Two requests at once are safe: imports of one dataset take turns (a per-dataset lock),
and import_dataset is a no-op when the source and the options are unchanged.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marginlens.core import jobs
from marginlens.core.data.formats import FORMATS
from marginlens.core.data.ingest import import_dataset
from marginlens.core.errors import MarginLensError
from marginlens.core.workspace import Workspace, check_name


@dataclass(frozen=True)
class ImportSpec:
    """An import job's params: what import_dataset is called with, and when it was asked for."""

    source: str
    requested_at: float
    name: str
    format: str
    mapping: dict[str, str]
    policy: str
    max_prompt_chars: int | None
    allow_empty_responses: bool
    split: str | None
    replace: bool

    def to_params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ImportSpec:
        return cls(**{f.name: params.get(f.name) for f in dataclasses.fields(cls)})


def import_spec(
    source: str | Path,
    name: str,
    *,
    format: str = "auto",
    mapping: dict[str, str] | None = None,
    policy: str = "strict",
    max_prompt_chars: int | None = None,
    allow_empty_responses: bool = True,
    split: str | None = None,
    replace: bool = False,
) -> ImportSpec:
    """The spec of an import job; the checks that need no reading fail here, before any job exists."""
    check_name(name)
    if format not in ("auto", *FORMATS):
        raise MarginLensError(f"unknown format {format!r}; expected auto or one of {', '.join(FORMATS)}")
    if policy not in ("strict", "skip"):
        raise MarginLensError(f"unknown policy {policy!r}; expected strict or skip")
    text = str(source).strip()
    if not text:
        raise MarginLensError("choose a file, a path or a Hub id first")
    path = Path(text).expanduser()
    if path.exists():
        text = str(path.resolve())  # a worker resolves nothing against its own working folder
    return ImportSpec(source=text, requested_at=time.time(), name=name, format=format, mapping=dict(mapping or {}),
                      policy=policy, max_prompt_chars=max_prompt_chars, allow_empty_responses=allow_empty_responses,
                      split=split, replace=replace)


def submit_import(ws: Workspace, spec: ImportSpec) -> jobs.Job:
    return jobs.submit(ws, "import", spec.to_params())


def run(ctx: jobs.JobContext) -> dict[str, Any]:
    """Job entry point (core.jobs.KINDS["import"]): the result carries the report's summary."""
    spec = ImportSpec.from_params(ctx.params)

    def rows(read: int, total: int | None) -> None:
        ctx.check_cancel()  # between rows: the half-written import folder is removed, nothing switches in
        ctx.progress(read, total)

    ctx.log(f"importing {spec.source} as {spec.name}")
    report = import_dataset(
        spec.source, spec.name, ctx.workspace, format=spec.format, mapping=spec.mapping, policy=spec.policy,
        max_prompt_chars=spec.max_prompt_chars, allow_empty_responses=spec.allow_empty_responses, split=spec.split,
        replace=spec.replace, progress=rows,
    )
    summary = report.summary()
    ctx.log(summary)
    ctx.progress(report.rows_read, report.rows_read, force=True)
    return {"name": report.name, "summary": summary, "format": report.format, "rows_read": report.rows_read,
            "imported": report.imported, "rejected": report.rejected, "flagged": report.flagged,
            "unchanged": report.unchanged}
