"""The "selfplay" job: evolve-then-select rounds for each (metric, seed), one child job per step.

Round t of a chain (metric m, seed s), policy pi (the starting model in round 1), prompt pool P:
  rollout   n sampled answers per prompt of P from pi, annotated, best vs worst paired  ("rollout" child)
  select    the top int(ratio * pairs) prompts by m over the pool's pairs (here: arrays, no child)
  evolve    each selected prompt x each strategy, filtered, with lineage             ("evolve" child)
  rollout   the kept rewrites, as above                                               ("rollout" child)
  train     pi on the pool's pairs + the rewrites' pairs                              ("train" child)
  evaluate  the trained model on the eval set                                         ("evaluate" child)
The kept rewrites are the next round's pool, the trained model its policy. Rounds run iteration by
iteration across the chains, so every metric has a first-iteration value early. Children are
core.experiments.job_tree children: a killed run resumes by resubmitting it, and a step two chains share
(round 1's rollout of the seed prompts, the same for every metric of one seed) is one job.

  results/seeds.jsonl           round 1's pool (core.selfplay.prompt_pool rows)
  results/eval_set.jsonl        the held-out prompts (when no eval set was given)
  results/chains/METRIC-sSEED/it{T}/selected.json   the round's selection (ids, scores, k, warnings)
  results/chains/METRIC-sSEED/it{T}/train.jsonl     the round's training pairs (conversational prompt)
  results/state.json            every chain's rounds so far (the page's timeline)
  results/table.json            per iteration, per metric: mean and interval over seeds
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from marginlens.core.atomic import read_json, read_jsonl, write_json, write_jsonl
from marginlens.core.errors import MarginLensError
from marginlens.core.experiments.experiment_results import cell_key
from marginlens.core.experiments.job_tree import JobTree
from marginlens.core.jobs import Job, JobContext, submit
from marginlens.core.selfplay.selfplay_results import selfplay_table
from marginlens.core.selfplay.selfplay_spec import SelfPlaySpec, seed_prompts
from marginlens.core.workspace import Workspace

STATE_FILE = "state.json"
TABLE_FILE = "table.json"
SEEDS_FILE = "seeds.jsonl"
EVAL_SET_FILE = "eval_set.jsonl"
STEPS_PER_ROUND = 5  # rollout, evolve, rollout, train, evaluate


def secret_env(spec: SelfPlaySpec) -> dict[str, str]:
    """The API keys the annotator, the evaluator and an OpenAI-compatible evolver read, from this process's
    environment: they reach the children's workers through `env`, never a spec."""
    from marginlens.core.chat_client import KEY_ENV

    names = {KEY_ENV}
    for evaluator in (spec.annotator, spec.evaluator):
        if evaluator.asks_llm and evaluator.api_key_env:
            names.add(evaluator.api_key_env)
    if spec.evolver.get("api_key_env"):
        names.add(spec.evolver["api_key_env"])
    return {name: os.environ[name] for name in sorted(names) if name in os.environ}


def check_endpoints(spec: SelfPlaySpec, env: dict[str, str] | None = None) -> None:
    """Every LLM endpoint the run asks must answer now, not after an hour of sampling."""
    from marginlens.core.experiments.evaluators import check_llm_endpoint

    for evaluator in (spec.annotator, spec.evaluator):
        if evaluator.asks_llm:
            check_llm_endpoint(evaluator.target, evaluator.base_url, evaluator.api_key_env, env)
    if spec.evolver.get("kind") == "openai":
        check_llm_endpoint(spec.evolver["model"], spec.evolver.get("base_url"), spec.evolver.get("api_key_env"), env)


def submit_selfplay(ws: Workspace, spec: SelfPlaySpec, env: dict[str, str] | None = None, check: bool = True) -> Job:
    """Start (or join, or resume) the run's job; `check`: every LLM endpoint it asks must answer first."""
    if check:
        check_endpoints(spec, env)
    return submit(ws, "selfplay", spec.to_params(), env={**secret_env(spec), **(env or {})})


def selfplay_state(job: Job) -> dict[str, Any]:
    return read_json(job.dir / "results" / STATE_FILE) or {}


def selfplay_results(job: Job) -> dict[str, Any] | None:
    return read_json(job.dir / "results" / TABLE_FILE)


def select_prompts(pairs: list[dict[str, Any]], metric: str, ratio: float, seed: int, weight: float,
                   signed: bool) -> dict[str, Any]:
    """The top int(ratio * N) of a round's pairs by the metric, best first (at least one: a handful of
    prompts must still evolve something). z-scores are over this round's pairs, as the reference's are."""
    from marginlens.core.selection.metric_base import metric_scores
    from marginlens.core.selection.select import top_k_eligible

    # a pair whose implicit margin is not a number (a response with no token) is no candidate, and is said
    candidates = [p for p in pairs if p.get("m_im") is not None and p.get("m_ex") is not None]
    left_out = len(pairs) - len(candidates)
    if not candidates:
        raise MarginLensError(f"none of the round's {len(pairs)} pairs has both margins: nothing to select from")
    m_ex = np.array([p["m_ex"] for p in candidates], dtype=np.float64)
    m_im = np.array([p["m_im"] for p in candidates], dtype=np.float64)
    k = max(1, int(ratio * len(candidates)))
    result = metric_scores(m_ex, m_im, metric, weight=weight, signed=signed, seed=seed)
    positions, warning = top_k_eligible(result, k)
    warnings = list(result.warnings) + ([warning] if warning else [])
    if left_out:
        warnings.append(f"{left_out} pair(s) without an implicit margin left out of the selection")
    return {"metric": metric, "candidates": len(candidates), "k": k, "ids": [candidates[i]["id"] for i in positions],
            "scores": [float(result.scores[i]) for i in positions], "warnings": warnings}


def training_rows(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """TRL's conversational form (the prompt as one user turn, as it was rendered when sampled), with the
    pair's id, margins and lineage kept for whoever reads the file (the trainer drops them)."""
    keep = ("id", "m_ex", "m_im", "parent", "strategy", "iteration", "root")
    return [{"prompt": [{"role": "user", "content": p["prompt"]}], "chosen": p["chosen"], "rejected": p["rejected"],
             **{k: p.get(k) for k in keep}} for p in pairs]


class _SelfPlay(JobTree):
    def __init__(self, ctx: JobContext, spec: SelfPlaySpec):
        super().__init__(ctx, steps_total=1 + STEPS_PER_ROUND * spec.iterations * len(spec.chains))
        self.spec = spec
        self.env = secret_env(spec)
        self.state: dict[str, Any] = {"baseline": {}, "chains": {}}

    def save(self, message: str) -> None:
        self.state["message"] = message
        write_json(self.results / STATE_FILE, self.state)
        write_json(self.results / TABLE_FILE, selfplay_table(self.spec, self.state))
        super().save(message)

    def prepare(self) -> tuple[Path, Path]:
        from marginlens.core.experiments.eval_set import write_eval_set
        from marginlens.core.selfplay.prompt_pool import write_pool
        from marginlens.core.selfplay.strategies import parse_strategies, strategy_tag

        names = [tag.split("@")[0] for tag in self.spec.strategies]
        now = [strategy_tag(s) for s in parse_strategies(names)]
        if now != list(self.spec.strategies):
            raise MarginLensError(f"the rewrite strategies changed since this run was planned ({', '.join(now)} "
                                  f"now, {', '.join(self.spec.strategies)} then): plan the run again")
        seeds = seed_prompts(self.ws, self.spec)
        pool = self.results / SEEDS_FILE
        write_pool(pool, seeds.pool)
        if self.spec.eval_set is not None:
            return pool, Path(self.spec.eval_set)
        eval_set = self.results / EVAL_SET_FILE
        write_eval_set(eval_set, seeds.eval_rows)
        return pool, eval_set

    def rollout(self, what: str, policy: str, prompts: Path, seed: int, record: dict[str, Any]) -> Path:
        from marginlens.core.selfplay.rollout_job import pairs_path, rollout_summary, submit_rollout

        spec = self.spec
        job = self.child(what, lambda: submit_rollout(
            self.ws, policy, prompts, spec.annotator, params=spec.sampling_params(seed), device=spec.device,
            backend=spec.backend, env=self.env, rules=spec.rules, system_prompt=spec.rules.get("system_prompt")),
            record, "job")
        record.update(rollout_summary(job))
        self.steps_done += 1
        return pairs_path(job)

    def round(self, metric: str, seed: int, t: int, policy: str, pools: list[Path], eval_set: Path,
              record: dict[str, Any]) -> tuple[str, Path] | None:
        """One round on the last of `pools` (the chain's pools so far, the seeds first); returns (the trained
        model, the next pool), or None when nothing is left to evolve."""
        from marginlens.core.selfplay.evolve_job import (
            EvolverSpec,
            evolution_summary,
            evolved_path,
            submit_evolution,
        )
        from marginlens.core.training.runs import final_model_path, submit_training

        spec = self.spec
        pool = pools[-1]
        where = self.results / "chains" / cell_key(metric, seed).replace("/", "-s") / f"it{t}"
        label = f"{metric} seed {seed} iteration {t}"
        record["step"] = "sample"
        pool_pairs = read_jsonl(self.rollout(f"sampling {label}", policy, pool, seed, record.setdefault("pool", {})))
        if not pool_pairs:
            record.update(step="stopped", last=True,
                          note="no prompt of the pool has two answers with different rewards: nothing to select")
            return None
        record["step"] = "select"
        selection = select_prompts(pool_pairs, metric, spec.ratio, seed, spec.weight, spec.signed)
        write_json(where / "selected.json", selection)
        record["selection"] = {k: selection[k] for k in ("candidates", "k", "warnings")}
        record["step"] = "evolve"
        names = [tag.split("@")[0] for tag in spec.strategies]
        # a rewrite may repeat no eval prompt and no prompt of this chain's pools so far (every earlier round's)
        exclude = [eval_set, *pools]
        evolve = self.child(f"evolving {label}", lambda: submit_evolution(
            self.ws, pool, selection["ids"], evolver=EvolverSpec.from_dict(spec.evolver), iteration=t,
            strategies=names, exclude=exclude, params=spec.evolve_params(seed), device=spec.device, env=self.env),
            record.setdefault("evolve", {}), "job")
        record["evolve"].update(evolution_summary(evolve))
        self.steps_done += 1
        rewrites = evolved_path(evolve)
        new_pairs: list[dict[str, Any]] = []
        if record["evolve"].get("kept"):
            record["step"] = "sample rewrites"
            new_pairs = read_jsonl(self.rollout(f"sampling the rewrites of {label}", policy, rewrites, seed,
                                                 record.setdefault("rewrites", {})))
        else:
            self.steps_done += 1
        if spec.rules.get("train_size") is not None:  # the reference profile's cap on the rewrite pairs
            from marginlens.core.selfplay.profiles import cap_pairs

            record["evolved_pairs"] = len(new_pairs)
            new_pairs = cap_pairs(new_pairs, spec.rules["train_size"])
        record["step"] = "train"
        data = where / "train.jsonl"
        write_jsonl(data, training_rows(pool_pairs + new_pairs))
        overrides = {**spec.overrides, "seed": seed}
        train = self.child(f"training {label}", lambda: submit_training(
            self.ws, data, spec.method, preset=spec.preset, model=policy, overrides=overrides, device=spec.device),
            record.setdefault("train", {"pairs": len(pool_pairs) + len(new_pairs)}), "job")
        self.steps_done += 1
        record["step"] = "evaluate"
        model = str(final_model_path(train))
        self.evaluate_model(f"evaluating {label}", model, eval_set, record.setdefault("eval", {}), spec.evaluator,
                            baseline_model=spec.policy, device=spec.device, env=self.env)
        record["step"] = "done"
        if not record["evolve"].get("kept"):
            record.update(last=True, note="no rewrite survived the filters: the chain stops after this round")
            return None
        return model, rewrites

    def run(self) -> dict[str, Any]:
        spec = self.spec
        self.save("preparing: seed prompts and the eval set")
        seeds, eval_set = self.prepare()
        self.state.update(eval_set=str(eval_set), seeds=str(seeds))
        self.evaluate_model("baseline evaluation", spec.policy, eval_set, self.state["baseline"], spec.evaluator,
                            baseline_model=spec.policy, device=spec.device, env=self.env)
        live = {cell_key(m, s): (spec.policy, [seeds]) for m, s in spec.chains}
        for m, s in spec.chains:
            self.state["chains"][cell_key(m, s)] = {"metric": m, "seed": s, "rounds": []}
        for t in range(1, spec.iterations + 1):
            for metric, seed in spec.chains:
                key = cell_key(metric, seed)
                if key not in live:
                    continue
                self.ctx.check_cancel()
                record: dict[str, Any] = {"iteration": t}
                self.state["chains"][key]["rounds"].append(record)
                policy, pools = live.pop(key)
                nxt = self.round(metric, seed, t, policy, pools, eval_set, record)
                if nxt is not None:
                    live[key] = (nxt[0], [*pools, nxt[1]])
                self.save(f"{metric} seed {seed}: iteration {t} {record['step']}")
        self.save("done")
        return read_json(self.results / TABLE_FILE)


def run(ctx: JobContext) -> dict[str, Any]:
    return _SelfPlay(ctx, SelfPlaySpec.from_params(ctx.params)).run()
