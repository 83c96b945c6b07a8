"""What an experiment selects from, what it tests on, and what it will take -- computed the same way
before it starts (the estimate the CLI prints and the page shows) and inside its job (what it runs).

Held-out prompts: with no eval set, a seeded share of the dataset's distinct prompts (HELDOUT_SHARE,
at most HELDOUT_CAP) becomes the eval set, and every pair with one of those prompts leaves every metric's
candidates: no metric trains on a test prompt. With an eval set, the dataset's pairs whose prompt is one
of its prompts leave the candidates too, and the plan says how many. A prompt is its last user turn
(core.data.pairs.prompt_text), the text an eval-set row holds: a held-out row keeps neither the earlier
turns of a multi-turn prompt nor its system prompt.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from marginlens.core.data.pairs import load_texts, prompt_text
from marginlens.core.errors import MarginLensError
from marginlens.core.experiments.experiment_spec import (
    HELDOUT_SEED,
    ExperimentSpec,
    table_rows,
    verdicts_fingerprint,
)
from marginlens.core.selection.margin_sources import margin_sources
from marginlens.core.selection.margins import load_margins
from marginlens.core.selection.select import Selection, SelectionSpec, select
from marginlens.core.training.lr_schedule import clamp_warmup, schedule_line, steps_per_run
from marginlens.core.workspace import Workspace


def prompt_key(text: str) -> str:
    """What makes two prompts the same prompt: their text with whitespace collapsed."""
    return " ".join(text.split())


def seeded_rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def heldout_count(n_prompts: int, share: float, cap: int) -> int:
    """How many of n distinct prompts are held out: round(share * n), at least 1, at most cap, and never
    all of them (something must remain to train on)."""
    if n_prompts < 2:
        return 0
    return min(cap, max(1, round(share * n_prompts)), n_prompts - 1)


def eval_row(prompt: str, source_json: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {"id": hashlib.sha256(prompt.encode()).hexdigest()[:12], "prompt": prompt}
    try:
        source = json.loads(source_json) if source_json else {}
    except json.JSONDecodeError:
        source = {}
    for name in ("answer", "task"):  # what a verifier checks, when the dataset's records carry it
        if isinstance(source, dict) and source.get(name) not in (None, ""):
            row[name] = str(source[name])
    return row


def held_out_rows(texts: Any, keys: list[str], share: float, cap: int) -> tuple[list[dict[str, Any]], set[str]]:
    """The seeded held-out share of a pair table's distinct prompts: (eval rows in table order, their keys).
    `keys`: prompt_key of each row's prompt text. One draw (HELDOUT_SEED) for every caller, so an experiment
    and a self-play run on one dataset test on the same prompts."""
    distinct = list(dict.fromkeys(keys))
    n = heldout_count(len(distinct), share, cap)
    held = set(sorted(distinct, key=lambda k: seeded_rank(HELDOUT_SEED, k))[:n])
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key in held and key not in first:
            first[key] = i
    sources = texts.column("source_json").to_pylist()
    prompts = texts.column("prompt")
    return [eval_row(prompt_text(prompts[i].as_py()), sources[i]) for i in sorted(first.values())], held


@dataclass
class Prepared:
    """The candidates every metric selects from, and the eval rows (held out, or the user's eval set)."""

    margins: pd.DataFrame  # the margin frame minus the excluded pairs
    eval_rows: list[dict[str, Any]]
    n_pairs: int  # pairs in the dataset
    n_prompts: int  # distinct prompts in the dataset
    excluded_pairs: int  # pairs left out because their prompt is an eval prompt
    eval_prompts_in_dataset: int  # eval prompts that are also dataset prompts


def prepare(ws: Workspace, spec: ExperimentSpec) -> Prepared:
    if ws.dataset_manifest(spec.dataset).get("fingerprint") != spec.dataset_fingerprint:
        raise MarginLensError(f"dataset {spec.dataset!r} was re-imported since this experiment was planned; "
                              "plan it again")
    _check_tables(ws, spec)
    texts = load_texts(ws, spec.dataset)
    keys = [prompt_key(prompt_text(p)) for p in texts.column("prompt").to_pylist()]
    margins = load_margins(ws, spec.dataset, policy_fp=spec.policy_fp, reward_fp=spec.reward_fp,
                           reference_fp=spec.reference_fp, beta=spec.beta)
    _check_metrics(margins, spec)
    distinct = list(dict.fromkeys(keys))
    if spec.eval_set is None:
        eval_rows, held = held_out_rows(texts, keys, spec.heldout_share, spec.heldout_cap)
        overlap = len(held)
    else:
        from marginlens.core.experiments.eval_set import eval_set_fingerprint, load_eval_set

        path = spec.eval_set
        if eval_set_fingerprint(Path(path)) != spec.eval_set_fingerprint:
            raise MarginLensError(f"{path} changed since this experiment was planned; plan it again")
        eval_rows = load_eval_set(Path(path))
        held = {prompt_key(str(r["prompt"])) for r in eval_rows} & set(distinct)
        overlap = len(held)
    if not eval_rows:
        raise MarginLensError(f"{spec.dataset!r} has too few distinct prompts to hold any out: give --eval-set")
    check_needs(spec, eval_rows)
    out = np.array([k in held for k in keys], dtype=bool)
    # frame rows follow the pair table (column "row"), so the mask lines up through it
    drop = out[margins["row"].to_numpy()]
    kept = margins.loc[~drop].reset_index(drop=True)
    kept.attrs = dict(margins.attrs)
    if kept.empty:
        raise MarginLensError(f"no pair of {spec.dataset!r} is left to train on once the eval prompts are excluded")
    return Prepared(kept, eval_rows, len(keys), len(distinct), int(drop.sum()), overlap)


def _check_tables(ws: Workspace, spec: ExperimentSpec) -> None:
    """A score table grown under its fingerprint since planning (a larger `score --sample`) changes every
    metric's candidates: finished cells would mix with cells selected from the larger set."""
    tables = {"policy": spec.policy_fp, "reward": spec.reward_fp, "reference": spec.reference_fp}
    now = table_rows(ws, spec.dataset, tables)
    for role, rows in spec.table_rows.items():
        if now.get(role, rows) != rows:
            raise MarginLensError(
                f"the {role} score table {tables[role]} of {spec.dataset!r} held {rows:,} rows when this experiment "
                f"was planned and holds {now[role]:,} now (scored again with another --sample): plan it again")
    if spec.verdicts is not None and verdicts_fingerprint(ws, spec.dataset, spec.metrics) != spec.verdicts:
        raise MarginLensError(f"audits/{spec.dataset}/verdicts.jsonl changed since this experiment was planned "
                              "(a new audit), and its cleaning rules read the judge's verdicts: plan it again")


def check_needs(spec: Any, rows: list[dict[str, Any]]) -> None:
    """A verifier's fields on every eval row, before any model generates: a missing `answer` would fail
    only after the baseline's generation, with no row named. `spec`: anything with `evaluator`, `eval_set`
    and `dataset` (an experiment's or a self-play run's)."""
    evaluator = spec.evaluator
    if evaluator.kind != "verifier":
        return
    from marginlens.core.experiments.verifiers import get_verifier

    where = spec.eval_set or f"the held-out rows of dataset {spec.dataset!r}"
    needs = get_verifier(evaluator.target).needs
    if "samples" in needs:
        raise MarginLensError(f"verifier {evaluator.target!r} scores an answer against its sibling answers to the "
                              "same prompt: it annotates self-play's samples and cannot evaluate a model; use "
                              "another evaluator")
    for field_name in needs:
        for row in rows:
            if row.get(field_name) in (None, ""):
                hint = ("" if spec.eval_set else " (its records carry no such field: give --eval-set with "
                        f"{field_name!r} on each row, or another --eval)")
                raise MarginLensError(f"{where}: row {row.get('id')!r} has no {field_name!r}, which verifier "
                                      f"{evaluator.target!r} needs{hint}")


def candidate_digest(prepared: Prepared) -> dict[str, Any]:
    """The candidates every metric selects from, as a count and a hash of their scored pair ids: recorded
    at an experiment's first run, so a resume never mixes cells of two candidate sets."""
    frame = prepared.margins
    scored = frame["scored"].to_numpy(dtype=bool) if "scored" in frame else np.ones(len(frame), dtype=bool)
    ids = sorted(frame["pair_id"].to_numpy()[scored].tolist())
    return {"pairs": len(ids), "sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}


def _check_metrics(margins: pd.DataFrame, spec: ExperimentSpec) -> None:
    sources = margin_sources(margins)
    missing = [m for m in spec.metrics if m not in sources.runnable]
    if missing:
        raise MarginLensError(
            f"{spec.dataset!r} is not scored for {', '.join(missing)}. {' '.join(sources.notes)} "
            f"Metrics that run now: {', '.join(sources.runnable) or 'none'}")


def selection_for(prepared: Prepared, spec: ExperimentSpec, metric: str, seed: int) -> Selection:
    """The cell's subset: the metric's top `ratio` of the candidates (the seed reaches the random metric)."""
    return select(prepared.margins, SelectionSpec(metric=metric, ratio=spec.ratio, seed=seed, weight=spec.weight,
                                                  signed=spec.signed, threshold=spec.threshold))


FEW_STEPS = 5  # optimizer steps per run below which the plan warns: the lab would compare untrained models


def capped(evaluator: Any, n_prompts: int) -> Any:
    """An LLM evaluator with no request cap of its own gets the plan's count for one model plus a quarter for
    retries, which count against the cap (name max_calls=N in --eval to set it)."""
    import dataclasses

    from marginlens.core.experiments.evaluate_job import evaluation_cost

    if not evaluator.asks_llm or evaluator.max_calls is not None:
        return evaluator
    cost = evaluation_cost(evaluator, n_prompts, 1)
    needed = cost["judge_requests"] + cost["rating_requests"]
    return dataclasses.replace(evaluator, max_calls=needed + math.ceil(needed / 4))


@dataclass
class ExperimentPlan:
    """What the experiment will take, before it starts."""

    runs: int  # metrics x seeds
    pairs_per_metric: dict[str, int]  # training pairs of one run (k), per metric
    candidates_per_metric: dict[str, int]
    steps_per_metric: dict[str, int]  # optimizer steps of one run, per metric
    total_steps: int
    eval_prompts: int
    evaluation: dict[str, int]  # core.experiments.evaluate_job.evaluation_cost over the baseline and every run
    excluded_pairs: int
    eval_prompts_in_dataset: int
    held_out: bool  # the eval set is a held-out share of the dataset
    notes: list[str] = field(default_factory=list)
    disk: str = ""  # what the runs will keep on disk (core.training.train_disk)
    estimate: Any = None  # core.run_estimate.Estimate: wall time and disk as a range, from measured rates

    def lines(self) -> list[str]:
        """The estimate as the CLI prints it and the page shows it."""
        per = ", ".join(f"{m} {self.pairs_per_metric[m]:,} pairs / {self.steps_per_metric[m]:,} steps"
                        for m in self.pairs_per_metric)
        where = ("held out from the dataset, each prompt's last user turn only (their pairs are no metric's "
                 "candidates)" if self.held_out else
                 f"from the eval set; {self.eval_prompts_in_dataset} of them are dataset prompts, whose "
                 f"{self.excluded_pairs} pairs are no metric's candidates")
        cost = ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in self.evaluation.items())
        return [
            f"runs: {self.runs} (metrics x seeds), each trained with the same configuration",
            f"per run: {per}",
            f"total optimizer steps: {self.total_steps:,}",
            f"eval prompts: {self.eval_prompts:,}, {where}",
            f"evaluation of {self.runs + 1} models (the runs and the baseline): {cost}",
            *([self.disk] if self.disk else []),
            *(self.estimate.lines() if self.estimate else []),
            *self.notes,
        ]

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def schedule_notes(trl: dict[str, Any], steps: Any) -> list[str]:
    """The learning rate of each run's steps (the shortest and the longest run, when they differ), and the
    warmup the train job clamps (core.training.lr_schedule)."""
    counts = sorted({int(n) for n in steps if int(n) > 0})
    lengths = counts[:1] + counts[-1:] if len(counts) > 1 else counts
    out = []
    for n in lengths:
        _, clamped = clamp_warmup(trl, n)
        prefix = f"{n}-step runs: " if len(lengths) > 1 else ""
        out.append(prefix + schedule_line(trl, n) + (f" ({clamped})" if clamped else ""))
    return out


def plan_experiment(ws: Workspace, spec: ExperimentSpec, prepared: Prepared | None = None) -> ExperimentPlan:
    from marginlens.core.experiments.evaluate_job import evaluation_cost
    from marginlens.core.training.settings import resolve_settings

    prepared = prepared or prepare(ws, spec)
    resolved = resolve_settings(spec.method, spec.preset, spec.overrides, spec.device)
    pairs, candidates, steps = {}, {}, {}
    for metric in spec.metrics:
        chosen = selection_for(prepared, spec, metric, spec.seeds[0])
        pairs[metric], candidates[metric] = int(chosen.positions.size), chosen.n_candidates
        steps[metric] = steps_per_run(pairs[metric], resolved["trl"], resolved["settings"])
    notes = []
    if any(n == 0 for n in pairs.values()):
        notes.append("a metric selects no pair at this ratio: raise --ratio")
    elif min(steps.values()) < FEW_STEPS:
        batch = resolved["settings"].get("effective_batch_size")
        if int(resolved["trl"].get("max_steps", -1) or -1) > 0:  # the step count is set, not the batch's doing
            notes.append(f"each run takes only {min(steps.values())} optimizer step(s) (max_steps): "
                         "so few steps barely move the model; raise max_steps in the training settings")
        else:
            against = f" against an effective batch of {batch} pairs" if batch else ""
            notes.append(f"each run takes only {min(steps.values())} optimizer step(s): a subset of "
                         f"{min(pairs.values())} pairs{against} barely moves the model; lower "
                         "effective_batch_size or raise num_train_epochs (or max_steps) in the training settings")
    notes.extend(schedule_notes(resolved["trl"], steps.values()))
    runs = len(spec.cells)
    n_eval = len(prepared.eval_rows)
    if spec.evaluator.asks_llm:
        notes.append(f"requests capped at {capped(spec.evaluator, n_eval).max_calls:,} per evaluated model "
                     "(retries count; max_calls=N in the evaluator sets another cap)")
    evaluation = evaluation_cost(spec.evaluator, n_eval, runs + 1)
    disk, disk_range = _disk(ws, spec, prepared, resolved, steps, pairs, evaluation)
    return ExperimentPlan(
        runs=runs, pairs_per_metric=pairs, candidates_per_metric=candidates, steps_per_metric=steps,
        total_steps=sum(steps[m] for m, _ in spec.cells), eval_prompts=n_eval,
        evaluation=evaluation, excluded_pairs=prepared.excluded_pairs,
        eval_prompts_in_dataset=prepared.eval_prompts_in_dataset, held_out=spec.eval_set is None, notes=notes,
        disk=disk, estimate=_estimate(ws, spec, resolved, steps, pairs, n_eval, disk_range),
    )


def _estimate(ws: Workspace, spec: ExperimentSpec, resolved: dict[str, Any], steps: dict[str, int],
              pairs: dict[str, int], n_eval: int, disk: tuple[int, int] | None) -> Any:
    """Wall time of the runs one after another: each run's training (its steps x the effective batch, at
    most its pairs, or its pairs x epochs when no max_steps), then every model's evaluation (core.run_estimate)."""
    from marginlens.core.run_estimate import (
        combine,
        generating,
        measured_rates,
        model_params,
        scoring,
        training,
    )

    trl, settings = resolved["trl"], resolved["settings"]
    rates = measured_rates(ws, resolved["device"], spec.policy, model_params(spec.policy))
    batch = (int(trl.get("per_device_train_batch_size", 8)) * int(trl.get("gradient_accumulation_steps", 1))
             * max(1, int(settings.get("num_processes") or 1)))
    low = high = 0.0
    for metric, _seed in spec.cells:
        # an epoch shorter than one effective batch makes one optimizer step of the pairs it has
        trained = (steps[metric] * min(batch, pairs[metric]) if int(trl.get("max_steps", -1) or -1) > 0
                   else math.ceil(float(trl.get("num_train_epochs", 1.0)) * pairs[metric]))
        lo, hi = training(rates, trained)
        low, high = low + lo, high + hi
    evaluator = spec.evaluator
    tokens = n_eval * evaluator.max_new_tokens * (2 if evaluator.kind == "judge" else 1)
    evaluate = generating(rates, tokens)
    if evaluator.kind == "reward":
        extra = scoring(rates, n_eval)
        evaluate = (evaluate[0] + extra[0], evaluate[1] + extra[1])
    untimed = ([f"the {evaluator.kind} requests to {evaluator.base_url or 'the endpoint'} (their rate is the "
                "endpoint's)"] if evaluator.asks_llm else [])
    runs = len(spec.cells)
    return combine(rates.device, rates, [(f"training {runs} run(s)", 1, (low, high)),
                                         ("evaluating a model", runs + 1, evaluate)], disk, untimed)



def _disk(ws: Workspace, spec: ExperimentSpec, prepared: Prepared, resolved: dict[str, Any], steps: dict[str, int],
          pairs: dict[str, int], evaluation: dict[str, int]) -> tuple[str, tuple[int, int] | None]:
    """The plan's disk line: the trained models (the longest run's checkpoints while it trains), each cell's
    exported subset (sized by the dataset's stored pairs) and the evaluation's answers."""
    from marginlens.core.training.train_disk import answers_bytes, disk_line, model_folder, run_disk

    folder = model_folder(spec.policy)
    run = run_disk(folder, resolved["settings"], resolved["trl"], max(steps.values())) if folder else None
    per_pair = ws.pairs_path(spec.dataset).stat().st_size / max(1, prepared.n_pairs)
    subsets = int(per_pair * sum(pairs[m] for m, _ in spec.cells))
    other = subsets + answers_bytes(evaluation["generations"], evaluation["generated_tokens"])
    line = disk_line(len(spec.cells), run, other, "training subsets and evaluation answers", spec.policy)
    kept = len(spec.cells) * run.kept + other if run else None
    return line, (kept, kept + run.while_training) if run and kept is not None else None
