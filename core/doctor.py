"""`marginlens doctor`: read every file MarginLens wrote in a workspace the way its readers do, and list each
damaged one with what is wrong and what `marginlens doctor --repair` does about it (core.doctor_repair).

Checked: every dataset (manifest, pairs.arrow read whole, its sha256 where the manifest records one), every
score table (manifest, parquet read whole, sha256), every job (spec.json, status.json, result.json, and a
score job's parts and the JSON files it keeps beside them). Each check calls the reader the product uses
(Workspace, scoring.score_tables, jobs.Job), so what the doctor finds is what a command would fail on, and
nothing it cannot see blocks one. Checking only reads: the Data page runs it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marginlens.core.integrity import QUARANTINE_DIR, DamagedFile, read_json_object
from marginlens.core.job_status import listed_spec
from marginlens.core.jobs import Job
from marginlens.core.scoring.score_parts import part_problem
from marginlens.core.scoring.score_tables import verify_score_table
from marginlens.core.workspace import Workspace

# What a finding is about, and so what --repair does with it (core.doctor_repair.REPAIRS).
DATASET_MANIFEST = "dataset manifest"
DATASET_DATA = "dataset data"
SCORE_TABLE = "score table"
JOB_SPEC = "job spec"
JOB_STATUS = "job status"
JOB_RESULT = "job result"
JOB_FILE = "job file"


@dataclass(frozen=True)
class Finding:
    kind: str  # one of the constants above
    subject: str  # the dataset's name, DATASET/FINGERPRINT of a table, or the job's id
    path: Path  # the damaged file
    problem: str
    fix: str  # what `marginlens doctor --repair` does about it, or what is left to the user


@dataclass
class Report:
    root: Path
    checked: dict[str, int] = field(default_factory=dict)  # "datasets", "score tables", "jobs" -> how many
    findings: list[Finding] = field(default_factory=list)

    def summary(self) -> str:
        counts = ", ".join(f"{n} {what}" for what, n in self.checked.items())
        return f"checked {self.root}: {counts}"


def check_workspace(ws: Workspace) -> Report:
    """Every damaged file of the workspace, with its fix; reads only."""
    report = Report(ws.root)
    names = ws.dataset_names()
    report.checked["datasets"] = len(names)
    for name in names:
        report.findings.extend(check_dataset(ws, name))
    tables = sorted(ws.scores_dir.glob("*/*/manifest.json"))
    report.checked["score tables"] = len(tables)
    for manifest in tables:
        report.findings.extend(check_table(ws, manifest.parent.parent.name, manifest.parent.name))
    folders = sorted(p for p in ws.jobs_dir.iterdir() if p.is_dir() and p.name != QUARANTINE_DIR)
    report.checked["jobs"] = len(folders)
    for folder in folders:
        report.findings.extend(check_job(ws, Job(folder)))
    return report


def check_dataset(ws: Workspace, name: str) -> list[Finding]:
    try:
        manifest = ws.dataset_manifest(name)
    except DamagedFile as exc:
        found = import_source(ws, name)
        fix = (f"moves {ws.dataset_dir(name)} to quarantine and imports {name!r} again from {found[0]} (the source "
               f"its import job {found[1].id} read)" if found else
               f"moves {ws.dataset_dir(name)} to quarantine; then import it again: marginlens import SOURCE "
               f"--name {name}")
        return [Finding(DATASET_MANIFEST, name, exc.path, exc.problem, fix)]
    try:
        ws.verify_dataset(name)
    except DamagedFile as exc:
        source = str(manifest["source"])
        if source_is_there(manifest):
            fix = f"moves the data folder to quarantine and imports {name!r} again from {source}, with its options"
        else:
            fix = (f"its source {source} is gone: import it again from a copy with `marginlens import FILE --name "
                   f"{name} --replace`")
        return [Finding(DATASET_DATA, name, exc.path, exc.problem, fix)]
    return []


def source_is_there(manifest: dict[str, Any]) -> bool:
    """Whether the dataset's recorded source can be read again (a Hub id is tried; a path must exist)."""
    return manifest.get("source_kind") == "hub" or Path(str(manifest["source"])).exists()


def import_source(ws: Workspace, name: str) -> tuple[str, Job] | None:
    """The newest finished import job of `name` whose source is still there: where a dataset whose manifest
    is lost came from (imports from the dashboard run as jobs; the CLI's leave no such record)."""
    for folder in sorted(ws.jobs_dir.glob("import-*"), key=lambda p: str(listed_spec(p).get("created", "")),
                         reverse=True):
        params = listed_spec(folder).get("params") or {}
        source = str(params.get("source") or "")
        if params.get("name") == name and source and Path(source).exists():
            return source, Job(folder)
    return None


def check_table(ws: Workspace, dataset: str, fingerprint: str) -> list[Finding]:
    try:
        verify_score_table(ws, dataset, fingerprint)
    except DamagedFile as exc:
        fix = (f"moves the table to quarantine; the next `marginlens score {dataset}` computes it again (only this "
               "table: the others are kept), and a finished score job that made it is reopened to rebuild it from "
               "the parts it kept, scoring only the pairs those lack")
        return [Finding(SCORE_TABLE, f"{dataset}/{fingerprint}", exc.path, exc.problem, fix)]
    return []


def check_job(ws: Workspace, job: Job) -> list[Finding]:
    """The job's own files, then (for a score job) its parts; a job a worker holds is skipped: it rewrites
    its status every few seconds, and its files are its own until it stops."""
    if not (job.dir / "spec.json").exists() and not (job.dir / "status.json").exists():
        return []
    if job.is_alive():
        return []
    try:
        spec = job.spec
    except DamagedFile as exc:
        return [Finding(JOB_SPEC, job.id, exc.path, exc.problem,
                        f"moves {job.dir} to quarantine (its results with it); submit the command again")]
    findings = []
    try:
        job.status()
    except DamagedFile as exc:
        findings.append(Finding(JOB_STATUS, job.id, exc.path, exc.problem,
                                "rebuilds status.json from the job folder: done when its result.json is there, "
                                f"else interrupted, which `marginlens jobs resume {job.id}` continues"))
    try:
        job.result()
    except DamagedFile as exc:
        findings.append(Finding(JOB_RESULT, job.id, exc.path, exc.problem,
                                f"moves it to quarantine and marks the job interrupted: `marginlens jobs resume "
                                f"{job.id}` makes it again"))
    if spec.get("kind") == "score":
        findings.extend(_check_score_results(job))
    return findings


def _check_score_results(job: Job) -> list[Finding]:
    findings = []
    results = job.dir / "results"
    for path in sorted(results.glob("*/*.json")):
        try:
            read_json_object(path)
        except DamagedFile as exc:
            findings.append(Finding(JOB_FILE, job.id, path, exc.problem,
                                    "moves it to quarantine; the job makes it again when it resumes"))
    for path in sorted(results.glob("*/part-*.parquet")):
        problem = part_problem(path)
        if problem:
            findings.append(Finding(JOB_FILE, job.id, path, problem,
                                    "moves it to quarantine; the job scores its pairs again when it resumes"))
    return findings
