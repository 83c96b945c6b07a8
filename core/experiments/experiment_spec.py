"""What an experiment is: the typed params of the "experiment" job (core.experiments.experiment_job).

An experiment trains one model per (metric, seed) on that metric's top `ratio` of a dataset, with one
identical training configuration, and evaluates every trained model and the starting model (the baseline)
on the same held-out prompts. Everything its result depends on is in the spec, resolved when it is
built (the dataset's import fingerprint, the score tables the margins come from, the eval set's content
hash), so resubmitting it is the same job and a changed input is a new one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marginlens.core.errors import MarginLensError
from marginlens.core.selection.metrics import DEFAULT_PARAMS, metric_names
from marginlens.core.training.presets import check_method
from marginlens.core.workspace import Workspace

DEFAULT_METRICS = ("map", "explicit", "implicit", "random")
DEFAULT_RATIO = 0.4
DEFAULT_SEEDS = 3
FIRST_SEED = DEFAULT_PARAMS.seed  # 42: one seed reproduces the random metric's and the preset's default
HELDOUT_SHARE = 0.1  # of the dataset's distinct prompts, when no eval set is given
HELDOUT_CAP = 200
HELDOUT_SEED = 0  # one held-out draw for every seed: the seeds vary training, not the test set


def seeds_for(count: int, first: int = FIRST_SEED) -> tuple[int, ...]:
    if count < 1:
        raise MarginLensError(f"--seeds must be at least 1, got {count}")
    return tuple(range(first, first + count))


@dataclass(frozen=True)
class ExperimentSpec:
    dataset: str
    dataset_fingerprint: str  # the import the experiment selects from
    metrics: tuple[str, ...]
    ratio: float
    method: str  # "dpo" | "simpo"
    seeds: tuple[int, ...]
    eval: dict[str, Any]  # the evaluator: core.experiments.evaluators.EvalSpec's fields
    policy: str  # the starting model (a core.scoring.models spec), evaluated once as the baseline
    policy_fp: str | None  # the logprob table of the implicit margin
    reward_fp: str | None  # the reward table of the explicit margin (None: the dataset's own scores)
    eval_set: str | None = None  # a user's eval set file; None: a held-out share of the dataset's prompts
    eval_set_fingerprint: str | None = None
    heldout_share: float = HELDOUT_SHARE
    heldout_cap: int = HELDOUT_CAP
    preset: str | None = None
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    device: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", tuple(self.metrics))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "overrides", dict(self.overrides or {}))
        object.__setattr__(self, "eval", dict(self.eval))

    @property
    def evaluator(self) -> Any:
        """The EvalSpec (core.experiments.evaluators) every model is evaluated with."""
        from marginlens.core.experiments.evaluators import EvalSpec

        return EvalSpec(**self.eval)

    @property
    def cells(self) -> list[tuple[str, int]]:
        """(metric, seed) in the order they run: seed by seed, so every metric has a value early."""
        return [(metric, seed) for seed in self.seeds for metric in self.metrics]

    def to_params(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["metrics"], out["seeds"] = list(self.metrics), list(self.seeds)
        return out

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ExperimentSpec:
        return cls(**{f.name: params[f.name] for f in dataclasses.fields(cls) if f.name in params})


def build_spec(
    ws: Workspace,
    dataset: str,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    ratio: float = DEFAULT_RATIO,
    method: str = "simpo",
    seeds: int | Sequence[int] = DEFAULT_SEEDS,
    eval: str | Any,
    eval_url: str | None = None,
    eval_set: str | Path | None = None,
    policy: str | None = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    device: str | None = None,
    policy_fp: str | None = None,
    reward_fp: str | None = None,
    heldout_share: float = HELDOUT_SHARE,
    heldout_cap: int = HELDOUT_CAP,
) -> ExperimentSpec:
    """Check the request and resolve what the result depends on. Raises MarginLensError naming what is
    wrong: an unknown metric or verifier, a ratio outside (0, 1], margins the dataset lacks, an unreadable
    eval set, training settings TRL refuses."""
    from marginlens.core.experiments.eval_set import eval_set_fingerprint, load_eval_set
    from marginlens.core.experiments.evaluators import parse_eval
    from marginlens.core.scoring.models import resolve_model
    from marginlens.core.selection.margins import default_scorers
    from marginlens.core.training.settings import resolve_settings

    metrics = tuple(dict.fromkeys(m.strip() for m in metrics if m.strip()))
    if not metrics:
        raise MarginLensError("name at least one metric (--metrics map,explicit,implicit,random)")
    unknown = [m for m in metrics if m not in metric_names()]
    if unknown:
        raise MarginLensError(f"unknown metric {unknown[0]!r} (known: {', '.join(metric_names())})")
    if not 0 < ratio <= 1:
        raise MarginLensError(f"--ratio must be in (0, 1], got {ratio}")
    if not 0 < heldout_share < 1 or heldout_cap < 1:
        raise MarginLensError("the held-out share must be in (0, 1) and its cap at least 1")
    check_method(method)
    seed_list = seeds_for(seeds) if isinstance(seeds, int) else tuple(dict.fromkeys(int(s) for s in seeds))
    if not seed_list:
        raise MarginLensError("name at least one seed")
    evaluator = parse_eval(eval) if isinstance(eval, str) else eval  # fails now, not inside the worker
    if eval_url:
        evaluator = dataclasses.replace(evaluator, base_url=eval_url)
    overrides = dict(overrides or {})
    if "seed" in overrides:
        raise MarginLensError("the training seed is the experiment's: use --seeds, not --set seed=...")
    resolve_settings(method, preset, overrides, device)  # unknown settings fail before anything runs
    manifest = ws.dataset_manifest(dataset)
    defaults = default_scorers(ws, dataset)
    set_path = set_fp = None
    if eval_set is not None:
        path = Path(eval_set).expanduser().resolve()
        load_eval_set(path)
        set_path, set_fp = str(path), eval_set_fingerprint(path)
    return ExperimentSpec(
        dataset=dataset, dataset_fingerprint=str(manifest.get("fingerprint") or manifest.get("data")),
        metrics=metrics, ratio=float(ratio), method=method, seeds=seed_list, eval=dataclasses.asdict(evaluator),
        policy=resolve_model(policy).spec, policy_fp=policy_fp or defaults["policy"],
        reward_fp=reward_fp or defaults["reward"], eval_set=set_path, eval_set_fingerprint=set_fp,
        heldout_share=float(heldout_share), heldout_cap=int(heldout_cap), preset=preset, overrides=overrides,
        device=device,
    )
