"""`marginlens doctor --repair`: what each finding of core.doctor becomes. Nothing is deleted: a damaged file
or folder is moved to <workspace>/quarantine/<timestamp>/<its path in the workspace>.

  dataset manifest   the dataset folder is quarantined and imported again from the source its import job read
  dataset data       the data folder is quarantined and imported again from the source the manifest records,
                     with the options it records (so the same source gives the same fingerprint, and the
                     dataset's score tables still apply)
  score table        the table is quarantined, and the finished score jobs that made it are reopened (their
                     status rebuilt as interrupted): a resume rebuilds it from the parts they kept and scores
                     only the pairs those lack; a new `marginlens score` computes only this table
  job spec           the job folder is quarantined (no spec, no way to run it)
  job status         status.json is rebuilt from the folder: done when result.json is there, else interrupted
  job result         result.json is quarantined and the job marked interrupted, so a resume writes it again
  job file           a score job's part or JSON file is quarantined; the job makes it again when it resumes
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from marginlens.core.atomic import write_json
from marginlens.core.doctor import (
    DATASET_DATA,
    DATASET_MANIFEST,
    JOB_FILE,
    JOB_RESULT,
    JOB_SPEC,
    JOB_STATUS,
    SCORE_TABLE,
    Finding,
    Report,
    check_workspace,
    import_source,
    source_is_there,
)
from marginlens.core.errors import MarginLensError
from marginlens.core.integrity import DamagedFile, quarantine, quarantine_stamp
from marginlens.core.job_status import JobState
from marginlens.core.jobs import Job, list_jobs
from marginlens.core.workspace import Workspace

REBUILT = "rebuilt by `marginlens doctor --repair`"


@dataclass(frozen=True)
class Repair:
    finding: Finding
    fixed: bool
    message: str


def repair_workspace(ws: Workspace, report: Report | None = None) -> list[Repair]:
    """Repair every finding of `report` (a fresh check when None): jobs first, since reopening the jobs of a
    quarantined score table needs their status readable, then datasets, then tables."""
    report = report or check_workspace(ws)
    stamp = quarantine_stamp()
    order = [JOB_SPEC, JOB_RESULT, JOB_STATUS, JOB_FILE, DATASET_MANIFEST, DATASET_DATA, SCORE_TABLE]
    repairs = []
    for finding in sorted(report.findings, key=lambda f: order.index(f.kind)):
        try:
            fixed, message = REPAIRS[finding.kind](ws, finding, stamp)
        except MarginLensError as exc:  # an import that fails again, a source that changed its layout, ...
            fixed, message = False, str(exc)
        except Exception as exc:  # one repair that cannot be made (a Hub source offline) leaves the others to run
            fixed, message = False, f"{type(exc).__name__}: {exc}"
        repairs.append(Repair(finding, fixed, message))
    return repairs


def _dataset_manifest(ws: Workspace, finding: Finding, stamp: str) -> tuple[bool, str]:
    name = finding.subject
    found = import_source(ws, name)
    moved = quarantine(ws.dataset_dir(name), ws.root, stamp)
    if found is None:
        return False, (f"moved {ws.dataset_dir(name)} to {moved}; no record of its source is left: import it again "
                       f"with `marginlens import SOURCE --name {name}`")
    source, job = found
    params = job.spec.get("params") or {}
    summary = _import(ws, name, source, params)
    return True, f"moved {ws.dataset_dir(name)} to {moved}; imported it again from {source}: {summary}"


def _dataset_data(ws: Workspace, finding: Finding, stamp: str) -> tuple[bool, str]:
    name = finding.subject
    manifest = ws.dataset_manifest(name)
    data = ws.dataset_dir(name) / manifest["data"]
    moved = f"moved {data} to {quarantine(data, ws.root, stamp)}; " if data.exists() else ""
    source = str(manifest["source"])
    if not source_is_there(manifest):
        return False, (f"{moved}its source {source} is gone: import it again from a copy with `marginlens import "
                       f"FILE --name {name} --replace`")
    summary = _import(ws, name, source, manifest.get("options") or {})
    same = ws.dataset_manifest(name)["fingerprint"] == manifest["fingerprint"]
    after = ("the same data as before: its score tables still apply" if same else
             "the source has changed since the first import: score tables of the old import no longer apply")
    return True, f"{moved}imported it again from {source} ({after}): {summary}"


def _import(ws: Workspace, name: str, source: str, options: dict[str, Any]) -> str:
    from marginlens.core.data.ingest import import_dataset

    report = import_dataset(source, name, ws, format=options.get("format"), mapping=options.get("mapping"),
                            policy=options.get("policy") or "strict", max_prompt_chars=options.get("max_prompt_chars"),
                            allow_empty_responses=options.get("allow_empty_responses", True),
                            split=options.get("split"), replace=True)
    return report.summary().splitlines()[0]


def _score_table(ws: Workspace, finding: Finding, stamp: str) -> tuple[bool, str]:
    from marginlens.core.scoring.score_tables import table_dir, table_lock

    dataset, fingerprint = finding.subject.split("/", 1)
    folder = table_dir(ws, dataset, fingerprint)
    with table_lock(ws, dataset, fingerprint):  # not while a score job merges into it
        moved = quarantine(folder, ws.root, stamp)
    reopened = [job.id for job in list_jobs(ws, "score") if _made(job, dataset, fingerprint)]
    for job_id in reopened:
        job = Job(ws.jobs_dir / job_id)
        write_json(job.dir / "status.json", _interrupted(job, f"its score table {fingerprint} was damaged and moved "
                                                              f"to quarantine ({REBUILT})"))
    then = f"`marginlens score {dataset}` computes it again (only this table: the others are kept)"
    if reopened:
        then = (f"`marginlens jobs resume {reopened[0]}` rebuilds it from the parts that job kept, scoring only the "
                f"pairs those lack (reopened: {', '.join(reopened)}); {then}")
    return True, f"moved {folder} to {moved}; {then}"


def _made(job: Job, dataset: str, fingerprint: str) -> bool:
    """A finished score job whose result names this table."""
    try:
        result = job.result() or {}
        done = job.status().state is JobState.DONE
    except DamagedFile:
        return False
    return done and result.get("dataset") == dataset and fingerprint in (result.get("tables") or {}).values()


def _job_spec(ws: Workspace, finding: Finding, stamp: str) -> tuple[bool, str]:
    job = Job(ws.jobs_dir / finding.subject)
    return True, f"moved {job.dir} to {quarantine(job.dir, ws.root, stamp)}; submit the command again"


def _job_status(ws: Workspace, finding: Finding, stamp: str) -> tuple[bool, str]:
    job = Job(ws.jobs_dir / finding.subject)
    status = job.dir / "status.json"
    moved = quarantine(status, ws.root, stamp) if status.exists() else None
    rebuilt = rebuilt_status(job)
    write_json(status, rebuilt)
    kept = f"moved the damaged file to {moved}; " if moved else ""
    if rebuilt["state"] == JobState.DONE.value:
        return True, f"{kept}wrote a new status.json: done (its result.json is there)"
    return True, f"{kept}wrote a new status.json: interrupted; `marginlens jobs resume {job.id}` continues it"


def _job_result(ws: Workspace, finding: Finding, stamp: str) -> tuple[bool, str]:
    job = Job(ws.jobs_dir / finding.subject)
    moved = quarantine(finding.path, ws.root, stamp)
    write_json(job.dir / "status.json", _interrupted(job, f"its result.json was damaged and moved to quarantine "
                                                          f"({REBUILT})"))
    return True, f"moved it to {moved}; the job reads as interrupted: `marginlens jobs resume {job.id}` finishes it"


def _job_file(ws: Workspace, finding: Finding, stamp: str) -> tuple[bool, str]:
    return True, f"moved it to {quarantine(finding.path, ws.root, stamp)}; the job makes it again when it resumes"


def rebuilt_status(job: Job) -> dict[str, Any]:
    """A status.json for a job whose own is lost: done when its result.json reads back, else interrupted."""
    try:
        result = job.result()
    except DamagedFile:
        result = None
    if result is not None:
        finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((job.dir / "result.json").stat().st_mtime))
        return {"state": JobState.DONE.value, "message": f"done (status.json {REBUILT})", "finished": finished}
    return _interrupted(job, f"status.json was damaged ({REBUILT})")


def _interrupted(job: Job, why: str) -> dict[str, Any]:
    # "interrupted" is never written (core.job_status): a live state with no worker holding the job reads as
    # interrupted, and without a pid the message below is kept as it is
    return {"state": JobState.RUNNING.value, "pid": None,
            "message": f"interrupted: {why}; `marginlens jobs resume {job.id}` continues from what it wrote"}


REPAIRS: dict[str, Callable[[Workspace, Finding, str], tuple[bool, str]]] = {
    DATASET_MANIFEST: _dataset_manifest,
    DATASET_DATA: _dataset_data,
    SCORE_TABLE: _score_table,
    JOB_SPEC: _job_spec,
    JOB_STATUS: _job_status,
    JOB_RESULT: _job_result,
    JOB_FILE: _job_file,
}
