"""What an experiment is: the typed params of the "experiment" job (core.experiments.experiment_job).

An experiment trains one model per (metric, seed) on that metric's top `ratio` of a dataset, with one
identical training configuration, and evaluates every trained model and the starting model (the baseline)
on the same held-out prompts. Everything its result depends on is in the spec, resolved when it is
built (the dataset's import fingerprint, the score tables the margins come from and how many rows each
held, the starting model's identity when it is a folder, the eval set's content hash), so resubmitting it
is the same job and a changed input is a new one. A Hub id is pinned only by its @revision.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marginlens.core.errors import MarginLensError
from marginlens.core.selection.margins import DEFAULT_BETA
from marginlens.core.selection.metrics import DEFAULT_PARAMS, get_metric, metric_names
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
    # a retrained-in-place folder is another starting model (core.experiments.generation.generation_identity)
    policy_identity: str | None = None
    reference_fp: str | None = None  # the reference logprob table: the DPO-form implicit margin (dpo_gap)
    beta: float = DEFAULT_BETA  # of the DPO-form margin
    weight: float = DEFAULT_PARAMS.weight  # the selection's parameters (core.selection.select.SelectionSpec)
    signed: bool = DEFAULT_PARAMS.signed
    threshold: float = DEFAULT_PARAMS.threshold
    # rows of each score table when planned: a table grown by a larger `score --sample` under the same
    # fingerprint changes the candidates, so it is another experiment (experiment_plan.prepare refuses the old)
    table_rows: dict[str, int] = dataclasses.field(default_factory=dict)
    # the audit's verdict file when a metric reads the judge's signal (the cleaning rules): a new audit changes
    # their picks, so it is another experiment (experiment_plan.prepare refuses the old)
    verdicts: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "table_rows", dict(self.table_rows or {}))
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
        if out["verdicts"] is None:
            del out["verdicts"]  # absent unless a cleaning rule runs: other experiments keep their job ids
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
    reference_fp: str | None = None,
    beta: float = DEFAULT_BETA,
    weight: float = DEFAULT_PARAMS.weight,
    signed: bool = DEFAULT_PARAMS.signed,
    threshold: float = DEFAULT_PARAMS.threshold,
) -> ExperimentSpec:
    """Check the request and resolve what the result depends on. Raises MarginLensError naming what is
    wrong: an unknown metric or verifier, a ratio outside (0, 1], margins the dataset lacks, a policy
    table scored with another model than the starting one, an unreadable eval set, training settings TRL
    refuses."""
    from marginlens.core.experiments.eval_set import eval_set_fingerprint, load_eval_set
    from marginlens.core.experiments.evaluators import parse_eval
    from marginlens.core.scoring.llm_rating import check_base_url
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
        evaluator = dataclasses.replace(evaluator, base_url=check_base_url(eval_url))
    overrides = dict(overrides or {})
    if "seed" in overrides:
        raise MarginLensError("the training seed is the experiment's: use --seeds, not --set seed=...")
    resolve_settings(method, preset, overrides, device)  # unknown settings fail before anything runs
    manifest = ws.dataset_manifest(dataset)
    defaults = default_scorers(ws, dataset)
    source = resolve_model(policy)
    # a folder is known by its files; a Hub id by its name (offline, the default model resolves to a local
    # conversion whose bytes are this machine's, not the ones a shipped table recorded)
    folder = Path(source.spec).expanduser().is_dir()
    if not policy_fp:
        policy_fp = _policy_table(ws, dataset, source.spec, folder, metrics)
    reward_fp = reward_fp or defaults["reward"]
    if beta <= 0:
        raise MarginLensError(f"--beta must be positive, got {beta}")
    set_path = set_fp = None
    if eval_set is not None:
        path = Path(eval_set).expanduser().resolve()
        load_eval_set(path)
        set_path, set_fp = str(path), eval_set_fingerprint(path)
    return ExperimentSpec(
        dataset=dataset, dataset_fingerprint=str(manifest.get("fingerprint") or manifest.get("data")),
        metrics=metrics, ratio=float(ratio), method=method, seeds=seed_list, eval=dataclasses.asdict(evaluator),
        policy=source.spec, policy_fp=policy_fp, reward_fp=reward_fp, eval_set=set_path,
        eval_set_fingerprint=set_fp, heldout_share=float(heldout_share), heldout_cap=int(heldout_cap), preset=preset,
        overrides=overrides, device=device, policy_identity=_identity(source.spec) if folder else None,
        reference_fp=reference_fp or None,
        beta=float(beta), weight=float(weight), signed=bool(signed), threshold=float(threshold),
        table_rows=table_rows(ws, dataset, {"policy": policy_fp, "reward": reward_fp, "reference": reference_fp}),
        verdicts=verdicts_fingerprint(ws, dataset, metrics),
    )


def verdicts_fingerprint(ws: Workspace, dataset: str, metrics: Sequence[str]) -> str | None:
    """The content hash of the dataset's verdict file when one of `metrics` reads the judge's signal; None when
    none does (their picks do not depend on it) and "none" when there is no verdict file yet."""
    from marginlens.core.integrity import sha256_file
    from marginlens.core.selection.judge_signal import JUDGE_COLUMN

    if not any(JUDGE_COLUMN in get_metric(m).needs for m in metrics):
        return None
    path = ws.audits_dir / dataset / "verdicts.jsonl"
    return sha256_file(path) if path.is_file() else "none"


def _identity(folder: str) -> str:
    """A folder model's files (a Hub id is pinned by its @revision; hashing it would need the network)."""
    from marginlens.core.experiments.generation import generation_identity

    return generation_identity(folder)


def table_rows(ws: Workspace, dataset: str, tables: dict[str, str | None]) -> dict[str, int]:
    """Rows each named score table holds now (a missing table is left out: loading it fails by name)."""
    from marginlens.core.scoring.score_tables import score_manifest

    out = {}
    for role, fp in tables.items():
        manifest = score_manifest(ws, dataset, fp) if fp else None
        if manifest is not None:
            out[role] = int(manifest.get("rows", 0))
    return out


def _same_model(table: dict[str, Any], spec: str, is_local: bool, identity: str | None) -> bool:
    from marginlens.core.scoring.models import canonical_spec

    recorded = table.get("spec", {})
    if is_local:
        return identity is not None and str(recorded.get("identity", "")).split(":remote-code")[0] == identity
    return canonical_spec(str(recorded.get("model") or table.get("model") or "")) == canonical_spec(spec)


def _policy_table(ws: Workspace, dataset: str, policy: str, is_local: bool, metrics: Sequence[str]) -> str | None:
    """The newest current logprob table scored with the starting model itself: the implicit margin must be
    the margin of the model that trains. None when the dataset has no logprob table (the plan says which
    metrics cannot run); refused, naming both models, when it has only tables of other models and a
    metric reads the implicit margin."""
    from marginlens.core.scoring.models import model_identity
    from marginlens.core.scoring.score_tables import list_score_tables

    current = ws.dataset_manifest(dataset).get("fingerprint")
    tables = [m for m in list_score_tables(ws, dataset, "logprob")
              if m.get("spec", {}).get("dataset_fingerprint", current) == current]
    tables.sort(key=lambda m: m.get("spec", {}).get("role") != "policy")  # stable: policy-role tables first
    identity = model_identity(policy) if is_local else None
    same = [m for m in tables if _same_model(m, policy, is_local, identity)]
    if same:
        return str(same[0]["fingerprint"])
    implicit = [m for m in metrics if any(c.startswith("m_im") for c in get_metric(m).needs)]
    if not tables or not implicit:
        return None
    other = tables[0]
    raise MarginLensError(
        f"the implicit margin of {dataset!r} ({', '.join(implicit)} read it) was scored with "
        f"{other.get('spec', {}).get('model') or other.get('model')!r} (table {other['fingerprint']}), but the "
        f"experiment trains {policy!r}: score the dataset with `marginlens score {dataset} --policy {policy}`, "
        "or name the table to use anyway (--policy-table FINGERPRINT)")
