"""The "experiment" job: the orchestrator of one experiment (core.experiments.experiment_spec).

For each (metric, seed), seed by seed: select the metric's top `ratio` of the candidates, export it
(core.selection.export), train on it (a "train" job, core.training.runs.submit_training: one
configuration for every cell, the seed in the trainer's `seed` setting), then evaluate the final model on
the eval set (an "evaluate" job). The starting model is evaluated once, first: the baseline row.

Every step is a child job (core.experiments.job_tree: ids hash their specs; a killed orchestrator is
resumed by resubmitting it; a cancel reaches the running child), and each cell's export is a file at a
fixed place in this job's results folder, so the orchestrator keeps no state that cannot be rebuilt.

  results/eval_set.jsonl     the held-out prompts (when no eval set was given)
  results/candidates.json    the candidates' count and pair-id hash at the first run (a resume refuses others)
  results/cells/METRIC-sSEED/train.jsonl   the cell's training subset (+ .manifest.json)
  results/state.json         which step each cell is at, the child job ids and the values so far (the page)
  results/table.json         the table so far (core.experiments.experiment_results.results_table)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from marginlens.core.atomic import read_json, write_json
from marginlens.core.errors import MarginLensError
from marginlens.core.experiments.experiment_plan import (
    Prepared,
    candidate_digest,
    prepare,
    selection_for,
)
from marginlens.core.experiments.experiment_results import cell_key, results_table
from marginlens.core.experiments.experiment_spec import ExperimentSpec
from marginlens.core.experiments.job_tree import JobTree
from marginlens.core.jobs import Job, JobContext, submit
from marginlens.core.workspace import Workspace

STATE_FILE = "state.json"
TABLE_FILE = "table.json"
EVAL_SET_FILE = "eval_set.jsonl"
CANDIDATES_FILE = "candidates.json"


def submit_experiment(ws: Workspace, spec: ExperimentSpec, env: dict[str, str] | None = None,
                      check: bool = True) -> Job:
    """Start (or join, or resume) the experiment's job. `env`: secrets its evaluate jobs need (a judge's
    API key), passed to the worker's environment only. `check`: an LLM evaluator's endpoint must answer
    first (reachable, key accepted; core.audit.endpoint_check), so a dead one is said now, not after the
    baseline's generation."""
    evaluator = spec.evaluator
    if check and evaluator.asks_llm:
        from marginlens.core.experiments.evaluators import check_llm_endpoint

        check_llm_endpoint(evaluator.target, evaluator.base_url, evaluator.api_key_env, env)
    return submit(ws, "experiment", spec.to_params(), env=env)


def experiment_state(job: Job) -> dict[str, Any]:
    """What the orchestrator recorded so far ({} before it started)."""
    return read_json(job.dir / "results" / STATE_FILE) or {}


def experiment_table(job: Job) -> dict[str, Any] | None:
    """The table so far (partial while it runs), or None before any evaluation finished."""
    return read_json(job.dir / "results" / TABLE_FILE)


def child_env(spec: ExperimentSpec) -> dict[str, str]:
    """The secret the evaluator reads (its API key variable), from this process's environment."""
    from marginlens.core.chat_client import KEY_ENV

    evaluator = spec.evaluator
    if not evaluator.asks_llm:
        return {}
    name = evaluator.api_key_env or KEY_ENV
    return {name: os.environ[name]} if name and name in os.environ else {}


class _Orchestrator(JobTree):
    def __init__(self, ctx: JobContext, spec: ExperimentSpec):
        super().__init__(ctx, steps_total=1 + 2 * len(spec.cells))
        self.spec = spec
        self.state: dict[str, Any] = {"baseline": {}, "cells": {}}

    # -- bookkeeping ----------------------------------------------------------------------------------
    def save(self, message: str) -> None:
        self.state["message"] = message
        write_json(self.results / STATE_FILE, self.state)
        cells = {k: c for k, c in self.state["cells"].items() if c.get("mean") is not None}
        baseline = self.state["baseline"] if self.state["baseline"].get("mean") is not None else None
        if cells or baseline:
            table = results_table(self.spec.metrics, self.spec.seeds, cells, _public(baseline), self.spec.evaluator.label)
            write_json(self.results / TABLE_FILE, table)
        super().save(message)

    # -- the steps ------------------------------------------------------------------------------------
    def freeze_candidates(self, prepared: Prepared) -> None:
        """Finished cells' exports were selected from the first run's candidates: a resume that would
        select the rest from another set (a score table rewritten under its fingerprint) stops instead."""
        path = self.results / CANDIDATES_FILE
        now, first = candidate_digest(prepared), read_json(path)
        if first is None:
            write_json(path, now)
        elif first != now:
            raise MarginLensError(
                f"the candidates of {self.spec.dataset!r} changed since this experiment started ({first['pairs']:,} "
                f"scored pairs then, {now['pairs']:,} now, or other pairs): its finished cells were selected "
                "from the old set; plan the experiment again")

    def eval_set(self, prepared: Prepared) -> Path:
        if self.spec.eval_set is not None:
            return Path(self.spec.eval_set)
        from marginlens.core.experiments.eval_set import load_eval_set, write_eval_set

        path = self.results / EVAL_SET_FILE
        if not path.is_file() or load_eval_set(path) != prepared.eval_rows:
            write_eval_set(path, prepared.eval_rows)
        return path

    def evaluate(self, what: str, model: str, eval_set: Path, record: dict[str, Any]) -> None:
        spec = self.spec
        self.evaluate_model(what, model, eval_set, record, spec.evaluator, baseline_model=spec.policy,
                            device=spec.device, env=child_env(spec))

    def export(self, prepared: Prepared, metric: str, seed: int) -> Path:
        from marginlens.core.selection.export import export_selection
        from marginlens.core.selection.signal_cleaning import flip_mask
        from marginlens.core.training.train_data import write_flipped

        path = self.results / "cells" / f"{metric}-s{seed}" / "train.jsonl"
        if path.is_file() and path.with_name(path.name + ".manifest.json").is_file():
            return path  # the manifest is written last: the export is whole
        # A killed run may leave the data without its manifest: this job's own half-written file, which the
        # export's overwrite (it replaces recognised exports only) would refuse forever on resume.
        path.unlink(missing_ok=True)
        selection = selection_for(prepared, self.spec, metric, seed)
        if not selection.pair_ids:
            raise MarginLensError(f"metric {metric!r} selects no pair at ratio {self.spec.ratio}: raise the ratio")
        # a flip arm (core.selection.signal_cleaning) exports its picks beside train.jsonl, then writes them flipped
        flips = flip_mask(prepared.margins, selection)
        out = path if flips is None else path.with_name("selected.jsonl")
        out.unlink(missing_ok=True)
        # The metric's own picks: noisy-pair flags would shrink some subsets and not others.
        export_selection(self.ws, self.spec.dataset, selection, prepared.margins, out, "jsonl",
                         overwrite=True, apply_flags=False, within=self.results)
        if flips is not None:
            write_flipped(out, path, flips)
        return path

    def run(self) -> dict[str, Any]:
        from marginlens.core.training.runs import final_model_path, submit_training

        spec, ctx = self.spec, self.ctx
        self.save("preparing: held-out prompts and candidates")
        prepared = prepare(self.ws, spec)
        self.freeze_candidates(prepared)
        eval_set = self.eval_set(prepared)
        self.state.update(eval_set=str(eval_set), eval_prompts=len(prepared.eval_rows),
                          excluded_pairs=prepared.excluded_pairs)
        self.state["cells"] = {cell_key(m, s): {"metric": m, "seed": s, "step": "waiting"} for m, s in spec.cells}
        self.evaluate("baseline evaluation", spec.policy, eval_set, self.state["baseline"])
        for metric, seed in spec.cells:
            ctx.check_cancel()
            record = self.state["cells"][cell_key(metric, seed)]
            record["step"] = "select"
            export = self.export(prepared, metric, seed)
            record.update(export=str(export), pairs=_lines(export), step="train")
            overrides = {**spec.overrides, "seed": seed}
            train = self.child(f"training {metric} seed {seed}", lambda e=export, o=overrides: submit_training(
                self.ws, e, spec.method, preset=spec.preset, model=spec.policy, overrides=o, device=spec.device),
                record, "train_job")
            self.steps_done += 1
            record["step"] = "evaluate"
            self.evaluate(f"evaluation {metric} seed {seed}", str(final_model_path(train)), eval_set, record)
        self.save("done")
        return read_json(self.results / TABLE_FILE)


def _lines(path: Path) -> int:
    with open(path, encoding="utf-8") as fh:
        return sum(1 for _ in fh)


def _public(baseline: dict[str, Any] | None) -> dict[str, Any] | None:
    if not baseline:
        return None
    return {k: baseline.get(k) for k in ("mean", "n", "invalid", "wins", "ties", "losses", "eval_job")
            if baseline.get(k) is not None}


def run(ctx: JobContext) -> dict[str, Any]:
    return _Orchestrator(ctx, ExperimentSpec.from_params(ctx.params)).run()
