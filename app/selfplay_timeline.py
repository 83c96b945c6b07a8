"""A self-play run's rounds as the page shows them, read from the job folders only (no model, no worker):
the timeline (per chain and iteration: what was sampled, selected, evolved, trained and evaluated, each step
with its child job and that job's state) and the lineage of one round's rewrites (each kept rewrite beside
its parent's prompt, strategy, iteration and root seed, each dropped one with its reason)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from marginlens.core.errors import MarginLensError
from marginlens.core.job_status import JobState
from marginlens.core.jobs import Job
from marginlens.core.selfplay.evolve_job import evolution_summary, evolved_path
from marginlens.core.selfplay.prompt_pool import DROP_REASONS, load_pool, load_prompts
from marginlens.core.workspace import Workspace

NO_JOB = ""
# (column, the round record's part, the key holding its child job id)
JOB_COLUMNS = (("sampling job", "pool", "job"), ("evolve job", "evolve", "job"),
               ("rewrites job", "rewrites", "job"), ("train job", "train", "job"), ("eval job", "eval", "eval_job"))


def child_state(ws: Workspace, job_id: str | None) -> str:
    """"STATE · ID" of a child job, "missing · ID" when its folder is gone, "" when the step has none yet."""
    if not job_id:
        return NO_JOB
    job = Job(ws.jobs_dir / job_id)
    if not (job.dir / "spec.json").exists():
        return f"missing · {job_id}"
    return f"{job.status().state} · {job_id}"


def _sampled(part: dict[str, Any] | None) -> str:
    if not part or part.get("prompts") is None:
        return ""
    text = f"{part['prompts']} prompts, {part.get('pairs', 0)} pairs, {part.get('ties', 0)} ties"
    if part.get("invalid"):
        text += f", {part['invalid']} invalid"
    return text


def _dropped(counts: dict[str, int] | None) -> str:
    """"too_long 3, duplicate 1": the filters' reasons in their own order (state.json sorts its keys)."""
    counts = counts or {}
    reasons = [*(r for r in DROP_REASONS if r in counts), *sorted(set(counts) - set(DROP_REASONS))]
    parts = [f"{reason} {counts[reason]}" for reason in reasons if counts[reason]]
    return ", ".join(parts) if parts else "none"


def timeline_rows(ws: Workspace, state: dict[str, Any], order: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One row per chain and iteration, in the order they run: by iteration, then chain (`order`: the spec's
    chain keys; state.json's own key order is not the run's)."""
    rank = {key: i for i, key in enumerate(order)}
    rows = []
    for key, chain in (state.get("chains") or {}).items():
        for record in chain.get("rounds", []):
            selection = record.get("selection") or {}
            evolve = record.get("evolve") or {}
            train = record.get("train") or {}
            evaluation = record.get("eval") or {}
            row = {
                "chain": key, "iteration": record.get("iteration"), "step": record.get("step", ""),
                "sampled": _sampled(record.get("pool")),
                "selected": f"{selection['k']} of {selection['candidates']}" if selection.get("k") is not None else "",
                "rewrites asked": evolve.get("asked"), "kept": evolve.get("kept"),
                "dropped": _dropped(evolve.get("dropped")) if "asked" in evolve else "",
                "rewrites sampled": _sampled(record.get("rewrites")),
                "training pairs": train.get("pairs"), "eval mean": evaluation.get("mean"),
                "note": " ".join([record.get("note") or "", *(selection.get("warnings") or [])]).strip(),
            }
            for column, part, id_key in JOB_COLUMNS:
                row[column] = child_state(ws, (record.get(part) or {}).get(id_key))
            rows.append(row)
    return sorted(rows, key=lambda r: (r["iteration"] or 0, rank.get(r["chain"], len(rank)), r["chain"]))


def timeline_frame(ws: Workspace, state: dict[str, Any], order: Sequence[str] = ()) -> pd.DataFrame:
    columns = ["chain", "iteration", "step", "sampled", "selected", "rewrites asked", "kept", "dropped",
               "rewrites sampled", "training pairs", "eval mean", "note", *(c for c, _, _ in JOB_COLUMNS)]
    return pd.DataFrame(timeline_rows(ws, state, order), columns=columns)


def baseline_line(ws: Workspace, state: dict[str, Any]) -> str:
    """The starting model's evaluation, in words, with its job."""
    base = state.get("baseline") or {}
    if base.get("mean") is None:
        waiting = child_state(ws, base.get("eval_job"))
        return "starting model: not evaluated yet" + (f" ({waiting})" if waiting else "")
    job = child_state(ws, base.get("eval_job")) or (base.get("note") or "")
    return f"starting model (iteration 0): mean {base['mean']:.3f} over {base.get('n', '?')} eval prompts" + (
        f" · {job}" if job else "")


def evolve_rounds(state: dict[str, Any], order: Sequence[str] = ()) -> dict[str, str]:
    """"CHAIN iteration T" -> the evolve job id, for every round that has one, in timeline order."""
    return {f"{r['chain']} iteration {r['iteration']}": r["_evolve"] for r in _rounds(state, order) if r["_evolve"]}


def _rounds(state: dict[str, Any], order: Sequence[str]) -> list[dict[str, Any]]:
    rank = {key: i for i, key in enumerate(order)}
    rounds = [{"chain": key, "iteration": record.get("iteration") or 0,
               "_evolve": (record.get("evolve") or {}).get("job")}
              for key, chain in (state.get("chains") or {}).items() for record in chain.get("rounds", [])]
    return sorted(rounds, key=lambda r: (r["iteration"], rank.get(r["chain"], len(rank)), r["chain"]))


def _jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of dropped.jsonl (pool rows plus "reason" and the evolver's text, so not a pool file load_pool
    accepts); a missing file is no rows, a broken line an error naming it."""
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise MarginLensError(f"{path}, line {number}: not JSON ({exc.msg})") from None
    return rows


def _prompts(path: str | None) -> dict[str, str]:
    """id -> prompt of a pool or eval-set file (JSONL or JSONL.GZ, every row checked); no path, none."""
    if not path:
        return {}
    return {str(r["id"]): str(r["prompt"]) for r in load_prompts(Path(path))}


KEPT_COLUMNS = ["id", "iteration", "strategy", "prompt", "parent's prompt", "root", "root's prompt"]
DROPPED_COLUMNS = ["id", "strategy", "reason", "prompt", "evolver's text", "parent's prompt"]


def lineage(ws: Workspace, evolve_job_id: str, seeds: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, dropped) rewrites of one evolve job. Kept: id, iteration, strategy, the prompt, the parent's prompt,
    the root (the seed the line started from) and its prompt when `seeds` (the run's seeds file, state["seeds"])
    holds it. Dropped: with the reason and the evolver's raw text. Parents come from the pool the job read.
    A job that is not done yet has no rows."""
    job = Job(ws.jobs_dir / evolve_job_id)
    if not (job.dir / "spec.json").exists():
        raise MarginLensError(f"no evolve job {evolve_job_id!r} in {ws.root}")
    kept = pd.DataFrame(columns=KEPT_COLUMNS)
    dropped = pd.DataFrame(columns=DROPPED_COLUMNS)
    if job.status().state is not JobState.DONE:
        return kept, dropped
    parents = _prompts((job.spec.get("params") or {}).get("prompts"))
    roots = _prompts(seeds)
    # an evolution that kept nothing leaves an empty evolved.jsonl, which load_pool refuses as "no rows"
    rows = load_pool(evolved_path(job)) if int(evolution_summary(job).get("kept") or 0) > 0 else []

    def parent(row: dict[str, Any]) -> str:
        return parents.get(str(row.get("parent")), "(not in the pool file)")

    kept = pd.DataFrame([{"id": r["id"], "iteration": r["iteration"], "strategy": r["strategy"], "prompt": r["prompt"],
                          "parent's prompt": parent(r), "root": r["root"],
                          "root's prompt": roots.get(r["root"], "(not in the seeds file)" if seeds else "")}
                         for r in rows], columns=KEPT_COLUMNS)
    dropped = pd.DataFrame([{"id": r.get("id"), "strategy": r.get("strategy"), "reason": r.get("reason"),
                             "prompt": r.get("prompt"), "evolver's text": r.get("raw"), "parent's prompt": parent(r)}
                            for r in _jsonl(job.results_dir / "dropped.jsonl")], columns=DROPPED_COLUMNS)
    return kept, dropped
