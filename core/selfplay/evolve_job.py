"""The "evolve" job: rewrite the selected prompts of a pool with every strategy, filter, keep the lineage.

  job = submit_evolution(ws, pool, ["p1", "p7"], evolver=parse_evolver("local:./policy"), iteration=1)
  job.wait(); evolution_summary(job); load_pool(evolved_path(job))

One request per (parent, strategy), in parent order then strategy order; the rewrite of parent R by strategy S
gets the id f"{R}>{S}". The evolver is
  local:MODEL    any model spec (core.scoring.models); each instruction is one user turn through the model's chat
                 template, sampled with the job's seed by core.experiments.generation (cached per chunk in the
                 workspace, so a killed job resumes where it stopped and a rerun generates nothing)
  openai:MODEL   an OpenAI-compatible endpoint through core.chat_client: retries, a call cap (max_calls, counted
                 across the job's runs by a request ledger), and every answer stored once per exact request in
                 workspace/evolutions/FINGERPRINT/answers.jsonl, so neither a resumed job nor a rerun with a
                 larger cap pays for an answer twice.
Results folder:
  instructions.jsonl   (local) the instructions, eval-set format, ids as above
  evolved.jsonl        the kept rewrites, pool rows (core.selfplay.prompt_pool)
  dropped.jsonl        the refused ones: the candidate row, "reason" and the evolver's "raw" text; a local
                       evolver's rewrite that the token cap cut off is dropped as "truncated" (an endpoint's
                       finish reason is not read: its rewrites are never marked so)
  summary.json         {"asked", "kept", "dropped": {reason: count}, "strategies", "by_strategy", "truncated"}
`seen` for the duplicate filter: every prompt of the pool file and of the `exclude` files (eval sets, earlier pools).

Secrets (the endpoint's key) reach the worker only through `env`, never the params.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from marginlens.core.atomic import read_json, write_json, write_jsonl
from marginlens.core.errors import MarginLensError
from marginlens.core.job_status import JobState
from marginlens.core.jobs import Job, JobContext, submit
from marginlens.core.selfplay.prompt_pool import (
    drop_counts,
    filter_rewrites,
    load_prompts,
    normalise,
    pool_fingerprint,
    write_pool,
)
from marginlens.core.selfplay.strategies import (
    DEFAULT_STRATEGIES,
    clean_rewrite,
    parse_strategies,
    strategy_tag,
)
from marginlens.core.workspace import Workspace

__all__ = ["EvolveParams", "EvolverSpec", "evolution_summary", "evolved_path", "parse_evolver", "run",
           "submit_evolution"]

KIND = "evolve"
# bump when a change here changes what an evolution produces from the same params
EVOLVE_VERSION = 2  # 2: a rewrite cut off by the token cap is dropped ("truncated")
CONCURRENCY = 4  # requests in flight to an endpoint
CHUNK = 8  # requests between two cancellation checks
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class EvolverSpec:
    kind: Literal["local", "openai"]
    model: str
    base_url: str | None = None
    api_key_env: str | None = None  # the name of the variable holding the key, never the key
    max_calls: int | None = None  # requests one job may make, retries counted; None: no cap

    def __post_init__(self) -> None:
        if self.kind not in ("local", "openai"):
            raise MarginLensError(f"evolver: unknown kind {self.kind!r} (known: local, openai)")
        if not self.model.strip():
            raise MarginLensError(f"evolver {self.kind}: name the model")
        if self.kind == "local" and (self.base_url or self.api_key_env or self.max_calls is not None):
            raise MarginLensError("evolver local: base_url, api_key_env and max_calls are for openai evolvers only")
        if self.api_key_env is not None and not _ENV_NAME.match(self.api_key_env):
            raise MarginLensError("evolver: api_key_env names an environment variable (e.g. OPENAI_API_KEY); "
                                  "never put the key itself in it")
        if self.max_calls is not None and (isinstance(self.max_calls, bool) or self.max_calls < 1):
            raise MarginLensError(f"evolver: max_calls must be a positive number, got {self.max_calls}")
        if self.base_url is not None:
            from marginlens.core.scoring.llm_rating import check_base_url

            object.__setattr__(self, "base_url", check_base_url(self.base_url))

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.model}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvolverSpec:
        return cls(**{k: data[k] for k in ("kind", "model", "base_url", "api_key_env", "max_calls") if k in data})


def parse_evolver(text: str, base_url: str | None = None, api_key_env: str | None = None,
                  max_calls: int | None = None) -> EvolverSpec:
    """"local:MODEL" (a folder or hub id) or "openai:MODEL" (at `base_url`, or the openai package's default)."""
    kind, sep, model = (text or "").strip().partition(":")
    if not sep or kind.strip().lower() not in ("local", "openai"):
        raise MarginLensError(f"evolver {text!r}: expected local:MODEL (a model folder or hub id) or "
                              "openai:MODEL (an OpenAI-compatible endpoint)")
    return EvolverSpec(kind.strip().lower(), model.strip(), base_url, api_key_env, max_calls)  # type: ignore[arg-type]


@dataclass(frozen=True)
class EvolveParams:
    max_new_tokens: int = 128
    temperature: float = 0.8  # 0: greedy (local) / the endpoint's most likely answer
    top_p: float = 0.95
    seed: int = 42
    batch_size: int = 8  # local evolver only: prompts per generate() call
    max_ratio: float | None = 5.0  # the length filter (core.selfplay.prompt_pool.filter_rewrites); None: off
    system_prompt: str | None = None  # a system turn before each instruction (the reference profile's)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise MarginLensError("evolve: max_new_tokens and batch_size must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise MarginLensError(f"evolve: needs temperature >= 0 and 0 < top_p <= 1, got {self.temperature}, "
                                  f"{self.top_p}")
        if self.max_ratio is not None and not self.max_ratio > 1:
            raise MarginLensError(f"evolve: max_ratio must be above 1, got {self.max_ratio}")

    def to_dict(self) -> dict[str, Any]:
        """The job params' form: no system prompt key when there is none, so jobs submitted before the
        option existed keep their ids."""
        out = asdict(self)
        if self.system_prompt is None:
            del out["system_prompt"]
        return out


def _exclude_entry(path: Path) -> dict[str, str]:
    resolved = Path(path).expanduser().resolve()
    return {"path": str(resolved), "fingerprint": pool_fingerprint(load_prompts(resolved))}


def evolution_params(prompts: Path, parents: Sequence[str], *, evolver: EvolverSpec, iteration: int,
                     strategies: Sequence[str] = DEFAULT_STRATEGIES, exclude: Sequence[Path] = (),
                     params: EvolveParams = EvolveParams(), device: str | None = None) -> dict[str, Any]:
    """The evolve job's params (its id is their hash). Checks everything a worker would fail on later."""
    path = Path(prompts).expanduser().resolve()
    rows = load_prompts(path)
    ids = {r["id"] for r in rows}
    parents = [str(p) for p in parents]
    if not parents:
        raise MarginLensError(f"evolve: no parent prompts selected from {path}")
    duplicated = sorted({p for p in parents if parents.count(p) > 1})
    if duplicated:
        raise MarginLensError(f"evolve: parent ids given twice: {', '.join(map(repr, duplicated))}")
    missing = [p for p in parents if p not in ids]
    if missing:
        raise MarginLensError(f"prompt pool {path}: no row with id {missing[0]!r} (asked for as a parent; "
                              f"{len(missing)} missing in all)")
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 1:
        raise MarginLensError(f"evolve: iteration counts from 1, got {iteration!r}")
    out: dict[str, Any] = {
        "version": EVOLVE_VERSION, "prompts": str(path), "prompts_fingerprint": pool_fingerprint(rows),
        "parents": parents, "strategies": [strategy_tag(s) for s in parse_strategies(strategies)],
        "evolver": evolver.to_dict(), "iteration": iteration, "exclude": [_exclude_entry(p) for p in exclude],
        "params": params.to_dict(), "device": None, "model_identity": None,
    }
    if evolver.kind == "local":
        from marginlens.core.experiments.generation import generation_identity
        from marginlens.core.scoring.models import canonical_spec, resolve_device

        model = canonical_spec(evolver.model)
        out.update(evolver=EvolverSpec("local", model).to_dict(), model_identity=generation_identity(model),
                   device=resolve_device(device or "auto"))
    return out


def submit_evolution(ws: Workspace, prompts: Path, parents: Sequence[str], *, evolver: EvolverSpec, iteration: int,
                     strategies: Sequence[str] = DEFAULT_STRATEGIES, exclude: Sequence[Path] = (),
                     params: EvolveParams = EvolveParams(), device: str | None = None,
                     env: dict[str, str] | None = None) -> Job:
    """Start (or find running or done, or resume) the evolution of `parents` (ids in the pool file `prompts`).
    `env`: extra worker environment, the only way a key travels (the variable evolver.api_key_env names, or
    OPENAI_API_KEY)."""
    return submit(ws, KIND, evolution_params(prompts, parents, evolver=evolver, iteration=iteration,
                                             strategies=strategies, exclude=exclude, params=params,
                                             device=device), env=env)


def evolved_path(job: Job) -> Path:
    return job.results_dir / "evolved.jsonl"


def evolution_summary(job: Job) -> dict[str, Any]:
    """summary.json of a finished evolution."""
    status = job.status()
    if status.state is not JobState.DONE:
        raise MarginLensError(f"evolution {job.id} is {status.state.value}, not done: no summary yet")
    summary = read_json(job.results_dir / "summary.json")
    if not isinstance(summary, dict):
        raise MarginLensError(f"evolution {job.id}: {job.results_dir / 'summary.json'} is missing or not an object")
    return summary


# ------------------------------------------------------------------------------------------------
# The worker.
# ------------------------------------------------------------------------------------------------
def _checked_inputs(params: dict[str, Any]) -> tuple[list[dict[str, Any]], set[str]]:
    """The pool's rows and the `seen` texts, refused if any input changed since the job was submitted."""
    path = Path(params["prompts"])
    rows = load_prompts(path)
    if pool_fingerprint(rows) != params["prompts_fingerprint"]:
        raise MarginLensError(f"prompt pool {path} changed since this evolution was submitted; submit it again")
    seen = {normalise(r["prompt"]) for r in rows}
    for entry in params["exclude"]:
        excluded = load_prompts(Path(entry["path"]))
        if pool_fingerprint(excluded) != entry["fingerprint"]:
            raise MarginLensError(f"{entry['path']} changed since this evolution was submitted; submit it again")
        seen.update(normalise(r["prompt"]) for r in excluded)
    return rows, seen


def _requests(rows: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    by_id = {r["id"]: r for r in rows}
    strategies = parse_strategies(params["strategies"])  # refuses a strategy whose version changed meanwhile
    return [{"id": f"{parent}>{s.name}", "parent": parent, "strategy": strategy_tag(s),
             "instruction": s.instruction(by_id[parent]["prompt"])}
            for parent in params["parents"] for s in strategies]


def _local_answers(ctx: JobContext, requests: list[dict[str, Any]], evolver: EvolverSpec,
                   settings: EvolveParams) -> list[tuple[str | None, str, bool]]:
    from marginlens.core.experiments.eval_set import write_eval_set
    from marginlens.core.experiments.generation import (
        GenerationParams,
        generate_responses,
        generation_identity,
    )

    if generation_identity(evolver.model) != ctx.params["model_identity"]:
        raise MarginLensError(f"evolver model {evolver.model} changed since this evolution was submitted; "
                              "submit it again")
    instructions = ctx.results_dir / "instructions.jsonl"
    # Rewritten on every run with the same content: the same eval-set fingerprint, so the same generation cache.
    write_eval_set(instructions, [{"id": r["id"], "prompt": r["instruction"]} for r in requests])
    sampled = settings.temperature > 0
    generation = GenerationParams(max_new_tokens=settings.max_new_tokens, do_sample=sampled,
                                  temperature=settings.temperature if sampled else 1.0,
                                  top_p=settings.top_p if sampled else 1.0, seed=settings.seed, n=1,
                                  batch_size=settings.batch_size)

    def progress(done: int, total: int) -> None:
        ctx.check_cancel()
        ctx.progress(done, total, phase="generating")

    made = generate_responses(ctx.workspace, evolver.model, instructions, generation, device=ctx.params["device"],
                              progress=progress, check_cancel=ctx.check_cancel, log=ctx.log,
                              system_prompt=settings.system_prompt)
    return [(m["responses"][0], m["responses"][0], bool(m["truncated"][0])) for m in made]


def answers_fingerprint(evolver: EvolverSpec, settings: EvolveParams) -> str:
    """What an endpoint's answer depends on besides the request itself (the cap is not among it)."""
    from marginlens.core.chat_client import public_url
    from marginlens.core.scoring.scorers import slug

    what = {"model": evolver.model, "base_url": public_url(evolver.base_url), "version": EVOLVE_VERSION,
            "max_output_tokens": settings.max_new_tokens, "temperature": settings.temperature,
            "top_p": settings.top_p, "seed": settings.seed}
    if settings.system_prompt is not None:
        what["system_prompt"] = settings.system_prompt
    return f"{slug(evolver.model)}-{hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]}"


def _openai_answers(ctx: JobContext, requests: list[dict[str, Any]], evolver: EvolverSpec,
                    settings: EvolveParams) -> list[tuple[str | None, str, bool]]:
    from marginlens.core.chat_client import (
        KEY_ENV,
        Budget,
        Endpoint,
        JudgeCallError,
        JudgeClient,
        RequestLedger,
        ask_once,
        public_url,
    )
    from marginlens.core.keyed_log import KeyedLog

    endpoint = Endpoint(evolver.model, evolver.base_url, max_output_tokens=settings.max_new_tokens,
                        temperature=settings.temperature, top_p=settings.top_p)
    ledger = RequestLedger(ctx.results_dir / "evolver-requests.ledger")
    # The ledger carries the calls of this job's earlier runs: a resumed job's cap counts them too.
    client = JudgeClient(endpoint, os.environ.get(evolver.api_key_env or KEY_ENV),
                         Budget(evolver.max_calls, spent=ledger.spent()), ledger=ledger, seed=settings.seed)
    store = KeyedLog(ctx.workspace.root / "evolutions" / answers_fingerprint(evolver, settings) / "answers.jsonl",
                     key_of=lambda record: record["key"])

    def ask(request: dict[str, Any]) -> dict[str, Any]:
        try:
            return ask_once(
                store, client, [*system, {"role": "user", "content": request["instruction"]}],
                lambda completion: {"text": completion.text, "malformed": completion.malformed},
                lambda exc: (f"evolver {evolver.model} stopped: {exc} (max_calls); the answers so far are stored "
                             "and never asked again: submit with a larger max_calls to go on"),
                evolver_model=evolver.model, base_url=public_url(evolver.base_url))
        except JudgeCallError as exc:
            raise MarginLensError(f"evolver {evolver.model}: the request for {request['id']} failed: {exc}; the "
                                  "answers so far are stored and never asked again: resubmit to go on") from None

    system = [] if settings.system_prompt is None else [{"role": "system", "content": settings.system_prompt}]
    answers: list[tuple[str | None, str, bool]] = []
    ctx.log(f"asking {evolver.label} for {len(requests)} rewrites")
    with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        for start in range(0, len(requests), CHUNK):
            ctx.check_cancel()
            for record in pool.map(ask, requests[start:start + CHUNK]):
                # A body that never parsed has no text: the filter drops it as empty, its raw body recorded.
                answers.append((None if record.get("malformed") else record["text"], record["raw"], False))
            ctx.progress(len(answers), len(requests), phase="asking")
    return answers


def run(ctx: JobContext) -> dict[str, Any]:
    """The "evolve" job kind."""
    params = ctx.params
    evolver = EvolverSpec.from_dict(params["evolver"])
    settings = EvolveParams(**params["params"])
    rows, seen = _checked_inputs(params)
    requests = _requests(rows, params)
    ctx.progress(0, len(requests), force=True, phase="starting")
    ctx.log(f"evolving {len(params['parents'])} prompts x {len(params['strategies'])} strategies with "
            f"{evolver.label} (iteration {params['iteration']})")
    answers = (_local_answers if evolver.kind == "local" else _openai_answers)(ctx, requests, evolver, settings)
    by_id = {r["id"]: r for r in rows}
    candidates, raw = [], {}
    for request, (text, raw_text, truncated) in zip(requests, answers, strict=True):
        parent = by_id[request["parent"]]
        candidates.append({"id": request["id"], "prompt": clean_rewrite(text or ""), "parent": parent["id"],
                           "strategy": request["strategy"], "iteration": params["iteration"], "root": parent["root"]})
        raw[request["id"]] = (raw_text, truncated)
    # A rewrite the token cap cut off is an unfinished question: dropped before the filters look at it.
    whole = [c for c in candidates if not raw[c["id"]][1]]
    kept, dropped = filter_rewrites(whole, by_id, seen, settings.max_ratio)
    order = {c["id"]: i for i, c in enumerate(candidates)}
    dropped = sorted(dropped + [{**c, "reason": "truncated"} for c in candidates if raw[c["id"]][1]],
                     key=lambda d: order[d["id"]])
    results = ctx.results_dir
    write_pool(results / "evolved.jsonl", kept)
    write_jsonl(results / "dropped.jsonl", [{**d, "raw": raw[d["id"]][0], "truncated": raw[d["id"]][1]}
                                            for d in dropped])
    by_strategy = {tag: {"kept": sum(k["strategy"] == tag for k in kept),
                         "dropped": sum(d["strategy"] == tag for d in dropped)} for tag in params["strategies"]}
    summary = {"asked": len(requests), "kept": len(kept), "dropped": drop_counts(dropped),
               "strategies": list(params["strategies"]), "by_strategy": by_strategy,
               "truncated": sum(t for _, t in raw.values()), "evolver": evolver.label,
               "iteration": params["iteration"]}
    write_json(results / "summary.json", summary)
    ctx.progress(len(requests), len(requests), force=True, phase="done")
    ctx.log(f"kept {len(kept)} of {len(requests)} rewrites; dropped {summary['dropped']}")
    return summary
