"""What a self-play run is: the typed params of the "selfplay" job (core.selfplay.selfplay_job), its seed
prompts and eval set, and what it will take (the estimate the CLI prints and the page shows).

A run starts from a dataset's distinct prompts (at most `max_prompts`, a seeded draw) and a starting policy.
For each (metric, seed) it runs `iterations` rounds of: sample `n` answers per prompt, annotate them, pair
best against worst, select the top `ratio` of the prompts by the metric, evolve those with the rewrite
strategies, sample and pair the rewrites too, train on both pair sets, evaluate (the lab's evaluators).
The rewrites are the next round's prompts. Defaults follow the authors' evolve-then-select scripts:
n = 5, temperature 0.8, top_p 0.95, ratio 0.25, rewrites within 5x the original length, metric
z(m_ex) - z(|m_im|) with w = 1; eva's own rule (the reward gap) is the metric "explicit".

The eval set is the held-out share of the dataset's prompts (the experiments lab's draw, so both test on
the same prompts) or a user's file; its prompts are never seed prompts and a rewrite equal to one is dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marginlens.core.errors import MarginLensError
from marginlens.core.experiments.experiment_spec import HELDOUT_CAP, HELDOUT_SHARE, seeds_for
from marginlens.core.selection.metrics import DEFAULT_PARAMS, metric_names
from marginlens.core.selfplay.profiles import DEFAULT_PROFILE, plan_line, with_profile
from marginlens.core.training.presets import check_method
from marginlens.core.workspace import Workspace

DEFAULT_METRICS = ("map", "explicit")  # M_AP against eva's reward-gap rule
DEFAULT_RATIO = 0.25
DEFAULT_ITERATIONS = 2
DEFAULT_MAX_PROMPTS = 64
SELFPLAY_VERSION = 1  # bump when a change to the rounds (selection, training data, pools) changes a run's result
SEED_DRAW = 1  # the seed prompts' draw (the eval set's is the lab's HELDOUT_SEED): fixed, the seeds vary the rest


def sampling_settings(n: int, temperature: float, top_p: float, max_new_tokens: int | None) -> dict[str, Any]:
    """The rollouts' generation settings as the CLI and the page pass them, so both name the same run (and job
    id) for the same values; max_new_tokens None: the profile's (core.selfplay.profiles)."""
    out = {"n": int(n), "temperature": float(temperature), "top_p": float(top_p), "max_new_tokens": max_new_tokens}
    return {k: v for k, v in out.items() if v is not None}


def evolve_settings(max_new_tokens: int | None, max_ratio: float | None) -> dict[str, Any]:
    """None: the profile's value (the reference's length filter is off unless --filter-prompt)."""
    return {k: v for k, v in (("max_new_tokens", max_new_tokens), ("max_ratio", max_ratio)) if v is not None}


def selfplay_metrics() -> tuple[str, ...]:
    """The registered metrics a round can select by: those that read only m_ex and m_im (a rollout's pairs
    carry no reference model's margin and no per-response reward columns)."""
    from marginlens.core.selection.metrics import get_metric

    return tuple(m for m in metric_names() if set(get_metric(m).needs) <= {"m_ex", "m_im"})


@dataclass(frozen=True)
class SelfPlaySpec:
    dataset: str
    dataset_fingerprint: str
    policy: str  # the starting model (a core.scoring.models spec), evaluated once as the baseline
    annotate: dict[str, Any]  # the annotator: core.experiments.evaluators.EvalSpec fields (verifier/reward/rating)
    eval: dict[str, Any]  # the evaluator of every trained model (EvalSpec fields)
    evolver: dict[str, Any]  # core.selfplay.evolve_job.EvolverSpec fields
    iterations: int = DEFAULT_ITERATIONS
    metrics: tuple[str, ...] = DEFAULT_METRICS
    seeds: tuple[int, ...] = (DEFAULT_PARAMS.seed,)
    ratio: float = DEFAULT_RATIO
    weight: float = DEFAULT_PARAMS.weight
    signed: bool = DEFAULT_PARAMS.signed
    strategies: tuple[str, ...] = ()  # strategy tags "name@version"; () = every registered strategy
    max_prompts: int = DEFAULT_MAX_PROMPTS
    sampling: dict[str, Any] = dataclasses.field(default_factory=dict)  # GenerationParams fields but the seed
    evolve: dict[str, Any] = dataclasses.field(default_factory=dict)  # EvolveParams fields but the seed
    backend: str = "auto"  # sampling: "auto" | "transformers" | "vllm"
    eval_set: str | None = None
    eval_set_fingerprint: str | None = None
    heldout_share: float = HELDOUT_SHARE
    heldout_cap: int = HELDOUT_CAP
    method: str = "simpo"
    preset: str | None = None
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    device: str | None = None
    policy_identity: str | None = None  # a folder's files (generation_identity): retrained in place = new run
    version: int = SELFPLAY_VERSION
    rules: dict[str, Any] = dataclasses.field(default_factory=dict)  # the profile's (core.selfplay.profiles)

    def __post_init__(self) -> None:
        for name in ("metrics", "strategies"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        for name in ("annotate", "eval", "evolver", "sampling", "evolve", "overrides", "rules"):
            object.__setattr__(self, name, dict(getattr(self, name) or {}))

    @property
    def annotator(self) -> Any:
        from marginlens.core.experiments.evaluators import EvalSpec

        return EvalSpec(**self.annotate)

    @property
    def evaluator(self) -> Any:
        from marginlens.core.experiments.evaluators import EvalSpec

        return EvalSpec(**self.eval)

    @property
    def chains(self) -> list[tuple[str, int]]:
        """(metric, seed): one line of models each, trained iteration after iteration."""
        return [(metric, seed) for seed in self.seeds for metric in self.metrics]

    def sampling_params(self, seed: int) -> Any:
        from marginlens.core.selfplay.rollout_job import SAMPLING

        return dataclasses.replace(SAMPLING, **self.sampling, seed=seed)

    def evolve_params(self, seed: int) -> Any:
        from marginlens.core.selfplay.evolve_job import EvolveParams

        return dataclasses.replace(EvolveParams(), **self.evolve, seed=seed)

    def to_params(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for name in ("metrics", "seeds", "strategies"):
            out[name] = list(getattr(self, name))
        if not self.rules:  # the marginlens profile: the params (and job ids) of runs planned before profiles
            del out["rules"]
        return out

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SelfPlaySpec:
        return cls(**{f.name: params[f.name] for f in dataclasses.fields(cls) if f.name in params})


def build_selfplay_spec(
    ws: Workspace,
    dataset: str,
    *,
    annotate: str | Any,
    eval: str | Any,
    policy: str | None = None,
    evolver: str | None = None,
    evolver_url: str | None = None,
    evolver_key_env: str | None = None,
    evolver_max_calls: int | None = None,
    iterations: int = DEFAULT_ITERATIONS,
    metrics: Sequence[str] = DEFAULT_METRICS,
    seeds: int | Sequence[int] = 1,
    ratio: float = DEFAULT_RATIO,
    weight: float = DEFAULT_PARAMS.weight,
    signed: bool = DEFAULT_PARAMS.signed,
    strategies: str | Sequence[str] | None = None,
    max_prompts: int = DEFAULT_MAX_PROMPTS,
    sampling: dict[str, Any] | None = None,
    evolve: dict[str, Any] | None = None,
    backend: str = "auto",
    eval_set: str | Path | None = None,
    method: str = "simpo",
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    device: str | None = None,
    profile: str = DEFAULT_PROFILE,
    filter_prompt: bool = False,
    train_size: int | None = None,
) -> SelfPlaySpec:
    """Check the request and resolve what the run depends on; raises MarginLensError naming what is wrong.
    `evolver`: "local:MODEL", "openai:MODEL" or None (the starting policy, kept fixed across iterations).
    `profile` (core.selfplay.profiles.with_profile) fills the settings left unset."""
    from marginlens.core.experiments.eval_set import eval_set_fingerprint, load_eval_set
    from marginlens.core.experiments.evaluators import parse_eval
    from marginlens.core.experiments.generation import generation_identity
    from marginlens.core.scoring.models import resolve_model
    from marginlens.core.selfplay.evolve_job import EvolveParams, parse_evolver
    from marginlens.core.selfplay.rollout_job import SAMPLING
    from marginlens.core.selfplay.strategies import DEFAULT_STRATEGIES, parse_strategies, strategy_tag
    from marginlens.core.training.settings import resolve_settings

    metrics = tuple(dict.fromkeys(m.strip() for m in metrics if m.strip()))
    unknown = [m for m in metrics if m not in metric_names()]
    if not metrics or unknown:
        raise MarginLensError(f"unknown metric {unknown[0]!r} (known: {', '.join(metric_names())})" if unknown
                              else "name at least one metric (--metrics map,explicit)")
    runnable = selfplay_metrics()
    for metric in metrics:
        if metric not in runnable:
            raise MarginLensError(f"metric {metric!r} reads more than a round's pairs hold (their reward gap and "
                                  f"implicit margin); self-play can select by {', '.join(runnable)}")
    if iterations < 1:
        raise MarginLensError(f"--iterations must be at least 1, got {iterations}")
    if not 0 < ratio <= 1:
        raise MarginLensError(f"--ratio must be in (0, 1], got {ratio}")
    if max_prompts < 2:
        raise MarginLensError(f"--max-prompts must be at least 2, got {max_prompts}")
    if backend not in ("auto", "transformers", "vllm"):
        raise MarginLensError(f"--backend must be auto, transformers or vllm, got {backend!r}")
    check_method(method)
    seed_list = seeds_for(seeds) if isinstance(seeds, int) else tuple(dict.fromkeys(int(s) for s in seeds))
    annotator = parse_eval(annotate) if isinstance(annotate, str) else annotate
    if annotator.kind == "judge":
        raise MarginLensError("the annotator scores one answer at a time: use verifier:NAME, reward:MODEL or "
                              "rating:MODEL (a judge compares two models; it is an evaluator)")
    if annotator.kind == "verifier":
        from marginlens.core.experiments.verifiers import get_verifier

        fields = [f for f in get_verifier(annotator.target).needs if f != "samples"]
        if fields:
            raise MarginLensError(
                f"annotator verifier {annotator.target!r} needs the field(s) {', '.join(fields)} of each prompt, and a "
                "rewritten prompt has none (it is a new question): annotate with a reference-free rule "
                "(verifier:self-consistency), reward:MODEL or rating:MODEL")
    evaluator = parse_eval(eval) if isinstance(eval, str) else eval
    overrides = dict(overrides or {})
    if "seed" in overrides:
        raise MarginLensError("the training seed is the run's: use --seeds, not --set seed=...")
    resolve_settings(method, preset, overrides, device)
    source = resolve_model(policy)
    evolver_spec = parse_evolver(evolver or f"local:{source.spec}", base_url=evolver_url, api_key_env=evolver_key_env,
                                 max_calls=evolver_max_calls)
    sampling, evolve, rules = with_profile(profile, sampling or {}, evolve or {}, source.spec, evolver_spec.model,
                                           device, filter_prompt, train_size)
    for name, base, given in (("sampling", SAMPLING, sampling), ("evolution", EvolveParams(), evolve)):
        known = {f.name for f in dataclasses.fields(base)} - {"seed"}
        wrong = sorted(set(given) - known)
        if wrong:
            raise MarginLensError(f"unknown {name} setting {wrong[0]!r} (known: {', '.join(sorted(known))})")
        dataclasses.replace(base, **given)  # checks the values now, not inside the worker
    folder = Path(source.spec).expanduser().is_dir()
    tags = tuple(strategy_tag(s) for s in parse_strategies(strategies or list(DEFAULT_STRATEGIES)))
    set_path = set_fp = None
    if eval_set is not None:
        path = Path(eval_set).expanduser().resolve()
        load_eval_set(path)
        set_path, set_fp = str(path), eval_set_fingerprint(path)
    manifest = ws.dataset_manifest(dataset)
    return SelfPlaySpec(
        dataset=dataset, dataset_fingerprint=str(manifest.get("fingerprint") or manifest.get("data")),
        policy=source.spec, annotate=dataclasses.asdict(annotator), eval=dataclasses.asdict(evaluator),
        evolver=evolver_spec.to_dict(), iterations=int(iterations), metrics=metrics, seeds=seed_list,
        ratio=float(ratio), weight=float(weight), signed=bool(signed), strategies=tags,
        max_prompts=int(max_prompts), sampling=sampling, evolve=evolve, backend=backend, eval_set=set_path,
        eval_set_fingerprint=set_fp, method=method, preset=preset, overrides=overrides, device=device,
        policy_identity=generation_identity(source.spec) if folder else None, rules=rules)


@dataclass
class SeedPrompts:
    """The first pool (prompt-pool rows, core.selfplay.prompt_pool) and the eval rows."""

    pool: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    n_prompts: int  # distinct prompts in the dataset
    held_out: int  # of them, held out or in the user's eval set
    empty: int = 0  # distinct prompts whose last user turn is empty: no seed (said in the plan)


def seed_prompts(ws: Workspace, spec: SelfPlaySpec) -> SeedPrompts:
    """The dataset's distinct prompts minus the eval prompts, a seeded draw of at most `max_prompts`, in
    dataset order. A prompt is its last user turn (core.data.pairs.prompt_text), as in the lab."""
    from marginlens.core.data.pairs import load_texts, prompt_text
    from marginlens.core.experiments.eval_set import eval_set_fingerprint, load_eval_set
    from marginlens.core.experiments.experiment_plan import (
        check_needs,
        eval_row,
        held_out_rows,
        prompt_key,
        seeded_rank,
    )

    if ws.dataset_manifest(spec.dataset).get("fingerprint") != spec.dataset_fingerprint:
        raise MarginLensError(f"dataset {spec.dataset!r} was re-imported since this run was planned; plan it again")
    texts = load_texts(ws, spec.dataset)
    prompts = [prompt_text(p) for p in texts.column("prompt").to_pylist()]
    keys = [prompt_key(p) for p in prompts]
    if spec.eval_set is None:
        eval_rows, held = held_out_rows(texts, keys, spec.heldout_share, spec.heldout_cap)
    else:
        if eval_set_fingerprint(Path(spec.eval_set)) != spec.eval_set_fingerprint:
            raise MarginLensError(f"{spec.eval_set} changed since this run was planned; plan it again")
        eval_rows = load_eval_set(Path(spec.eval_set))
        held = {prompt_key(str(r["prompt"])) for r in eval_rows}
    if not eval_rows:
        raise MarginLensError(f"{spec.dataset!r} has too few distinct prompts to hold any out: give --eval-set")
    check_needs(spec, eval_rows)
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key not in held and key not in first:
            first[key] = i
    empty = 1 if first.pop("", None) is not None else 0
    drawn = sorted(first, key=lambda k: seeded_rank(SEED_DRAW, k))[:spec.max_prompts]
    sources = texts.column("source_json").to_pylist()
    pool = []
    for i in sorted(first[k] for k in drawn):
        row = eval_row(prompts[i], sources[i])
        pool.append({**row, "parent": None, "strategy": None, "iteration": 0, "root": row["id"]})
    if len(pool) < 2:
        raise MarginLensError(f"{spec.dataset!r} has {len(pool)} prompt(s) left once the eval prompts are out: "
                              "self-play needs at least 2")
    return SeedPrompts(pool, eval_rows, len(set(keys)), len(held & set(keys)), empty)


@dataclass
class SelfPlayPlan:
    seed_prompts: int
    eval_prompts: int
    held_out_of_dataset: int
    chains: int
    iterations: int
    selected_per_round: int  # prompts evolved in the first round, at most
    rewrites_asked: int  # evolution requests in the first round, at most
    answers_first_round: int  # sampled answers of the first round's seed prompts (per chain; shared by metrics)
    trainings: int
    evaluations: int  # the baseline included
    lines_: list[str] = dataclasses.field(default_factory=list)
    estimate: Any = None  # core.run_estimate.Estimate: wall time and disk as a range, from measured rates

    def lines(self) -> list[str]:
        return self.lines_

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["lines"] = out.pop("lines_")
        return out


def plan_selfplay(ws: Workspace, spec: SelfPlaySpec, seeds: SeedPrompts | None = None) -> SelfPlayPlan:
    """What the run will take, as upper bounds where they depend on the models: the first round selects at
    most int(ratio * seed prompts) (the prompts whose answers tie or fail give no pair and are no candidates)
    and asks at most that many times the strategies; later rounds' pools are the rewrites that survive."""
    seeds = seeds or seed_prompts(ws, spec)
    n = int(spec.sampling.get("n", spec.sampling_params(0).n))
    k = max(1, int(spec.ratio * len(seeds.pool)))
    strategies = len(spec.strategies)
    chains = len(spec.chains)
    evolver = spec.evolver
    lines = [
        f"{len(seeds.pool)} seed prompts from {spec.dataset!r} ({seeds.n_prompts} distinct, at most "
        f"{spec.max_prompts} drawn); {len(seeds.eval_rows)} eval prompts "
        + ("held out from the dataset" if spec.eval_set is None else f"from {spec.eval_set}")
        + (f"; {seeds.empty} empty prompt left out" if seeds.empty else ""),
        f"{chains} chain(s) ({', '.join(spec.metrics)} x seeds {', '.join(map(str, spec.seeds))}), "
        f"{spec.iterations} iteration(s) each",
        f"round 1: {n} answers per prompt ({n * len(seeds.pool)} in all, shared by the metrics of one seed), "
        f"at most the top {k} prompts by the metric evolved with {strategies} strategies (up to {k * strategies} "
        f"rewrites asked of {evolver.get('kind')}:{evolver.get('model')}), then {n} answers per kept rewrite",
        f"{chains * spec.iterations} training runs ({spec.method}), {chains * spec.iterations + 1} evaluations "
        f"({spec.evaluator.label}, the starting model once)",
        plan_line(spec),
    ]
    disk, estimate = _disk_line(ws, spec, seeds, n, strategies)
    from marginlens.core.selfplay.selfplay_estimate import schedule_lines

    lines += [disk, *estimate.lines(), *schedule_lines(spec, len(seeds.pool), strategies)]
    return SelfPlayPlan(len(seeds.pool), len(seeds.eval_rows), seeds.held_out, chains, spec.iterations, k,
                        k * strategies, n * len(seeds.pool), chains * spec.iterations, chains * spec.iterations + 1,
                        lines, estimate)


def _disk_line(ws: Workspace, spec: SelfPlaySpec, seeds: SeedPrompts, n: int, strategies: int) -> tuple[str, Any]:
    """What the run keeps on disk, as an upper bound: every round's trained model (the next round's policy),
    and the answers and rewrites of each chain's rounds (a round's prompts: at most the top ratio of the
    last round's, times the strategies) and of every evaluation."""
    from marginlens.core.experiments.evaluate_job import evaluation_cost
    from marginlens.core.experiments.experiment_plan import steps_per_run
    from marginlens.core.training.settings import resolve_settings
    from marginlens.core.training.train_disk import answers_bytes, disk_line, model_folder, run_disk

    resolved = resolve_settings(spec.method, spec.preset, spec.overrides, spec.device)
    sample_tokens, rewrite_tokens = spec.sampling_params(0).max_new_tokens, spec.evolve_params(0).max_new_tokens
    prompts, answers, tokens, most_pairs = len(seeds.pool), 0, 0, 0
    for _ in range(spec.iterations):
        rewrites = max(1, int(spec.ratio * prompts)) * strategies
        answers += n * (prompts + rewrites) + rewrites
        tokens += n * (prompts + rewrites) * sample_tokens + rewrites * rewrite_tokens
        most_pairs, prompts = max(most_pairs, prompts + rewrites), rewrites
    evaluation = evaluation_cost(spec.evaluator, len(seeds.eval_rows), len(spec.chains) * spec.iterations + 1)
    other = len(spec.chains) * answers_bytes(answers, tokens) + answers_bytes(evaluation["generations"],
                                                                            evaluation["generated_tokens"])
    folder = model_folder(spec.policy)
    steps = steps_per_run(most_pairs, resolved["trl"], resolved["settings"])
    run = run_disk(folder, resolved["settings"], resolved["trl"], steps) if folder else None
    trainings = len(spec.chains) * spec.iterations
    kept = trainings * run.kept + other if run else None
    disk = (kept, kept + run.while_training) if run and kept is not None else None
    line = disk_line(trainings, run, other, "sampled answers, rewrites and evaluation answers", spec.policy)
    from marginlens.core.selfplay.selfplay_estimate import selfplay_estimate

    return line, selfplay_estimate(ws, spec, seeds, n, strategies, resolved, disk)

