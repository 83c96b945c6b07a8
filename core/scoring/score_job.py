"""The "score" job: score a dataset under a policy / reference / reward model into score tables.

The one call for UIs and scripts is `submit_scoring(ws, ScoreSpec(...))`; it returns a
`ScoringHandle` whose `progress()` gives state, done/total, pairs/s, tokens/s and ETA.

Each (model, settings) is a task with a scorer fingerprint (model identity -- content hash of a
local folder, or the Hub commit -- dtype, tokenisation mode, max lengths, scorer version). A task
whose score table already exists for the current dataset is a cache hit: no job, no model load.
Column scores (no model) are computed inline at submit: reading two numbers per row needs no job.

Worker (`run`): every rank scores pairs[rank::world] in fixed chunks; each chunk is tokenized,
sorted and batched the same way every time, and results go to
results/FINGERPRINT/part-rankR-*.parquet (atomic writes, at most every FLUSH_SECONDS). A resumed
job skips every batch whose pair ids are all written, so it computes exactly the batches an
uninterrupted run would have computed, and ends with identical numbers. When all ranks have
marked a task finished, rank 0 merges the parts by pair_id into the score table.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from marginlens.core import jobs
from marginlens.core.atomic import read_json, write_json, write_with
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.models import (
    DEFAULT_POLICY,
    dtype_for,
    model_fingerprint,
    resolve_device,
    resolve_model,
)
from marginlens.core.scoring.score_tables import SCHEMAS, save_score_table, score_manifest
from marginlens.core.scoring.tokenization import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_MAX_PROMPT_LENGTH,
    MODES,
    check_lengths,
)
from marginlens.core.workspace import Workspace

SCORER_VERSION = 1  # bump when a change to the scorers changes their numbers
CHUNK_PAIRS = 1024
FLUSH_SECONDS = float(os.environ.get("MARGINLENS_SCORE_FLUSH_SECONDS", "5"))
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                    "tokenizer.model", "vocab.json", "merges.txt")


@dataclass
class ScoreSpec:
    """What to score. `policy=None` skips the implicit margin; `reward_model` and `score_columns`
    are the two explicit sources (at most one)."""

    dataset: str
    policy: str | None = DEFAULT_POLICY
    reference: str | None = None
    reward_model: str | None = None
    score_columns: str | None = None
    device: str = "auto"
    max_length: int = DEFAULT_MAX_LENGTH
    max_prompt_length: int = DEFAULT_MAX_PROMPT_LENGTH
    mode: str = "clean"
    batch_size: int | str = "auto"  # most pairs per batch; "auto": as many as the token budget allows
    token_budget: int | None = None  # padded tokens per batch; None: chosen from the device
    trust_remote_code: list[str] = field(default_factory=list)  # model specs the user opted in for


@dataclass
class Task:
    role: str  # policy, reference, reward, columns
    kind: str  # score table kind: logprob or reward
    model: str | None
    fingerprint: str
    scorer: dict[str, Any]


def _slug(text: str) -> str:
    name = Path(text.rstrip("/")).name if text else "columns"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)[:48].strip("-.") or "model"


def _identity(model: str, trust_remote_code: bool) -> str:
    """Weights plus tokenizer files (the chat template lives there) for folders; commit for the Hub."""
    source = resolve_model(model)
    identity = model_fingerprint(source)
    if source.is_local:
        hasher = hashlib.sha256(identity.encode())
        for name in _TOKENIZER_FILES:
            path = Path(source.path) / name
            if path.is_file():
                hasher.update(name.encode() + path.read_bytes())
        identity = "sha256:" + hasher.hexdigest()[:24]
    return identity + (":remote-code" if trust_remote_code else "")


def _fingerprint(kind: str, label: str, scorer: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(scorer, sort_keys=True).encode()).hexdigest()[:12]
    return f"{kind}-{_slug(label)}-{digest}"


def plan_tasks(spec: ScoreSpec) -> list[Task]:
    """The tasks of a spec with their fingerprints (cheap: hashes files, loads no model)."""
    if spec.reward_model and spec.score_columns:
        raise MarginLensError("give either a reward model or score columns for the explicit margin, not both")
    if spec.reference and not spec.policy:
        raise MarginLensError("a reference model only makes sense with a policy (the DPO form compares the two)")
    if spec.mode not in MODES:
        raise MarginLensError(f"unknown tokenisation mode {spec.mode!r} (expected one of {', '.join(MODES)})")
    check_lengths(spec.max_length, spec.max_prompt_length)
    device = resolve_device(spec.device)
    common = {"version": SCORER_VERSION, "dtype": dtype_for(device), "max_length": spec.max_length,
              "max_prompt_length": spec.max_prompt_length}
    tasks: list[Task] = []
    # Reference first, policy last: "the newest logprob table" is then the policy's.
    for role, model in (("reference", spec.reference), ("reward", spec.reward_model), ("policy", spec.policy)):
        if not model:
            continue
        trusted = model in spec.trust_remote_code
        kind = "reward" if role == "reward" else "logprob"
        scorer = {**common, "kind": kind, "model": model, "identity": _identity(model, trusted),
                  "mode": spec.mode if kind == "logprob" else "clean-no-eos"}
        tasks.append(Task(role, kind, model, _fingerprint(kind, model, scorer), scorer))
    if spec.score_columns:
        scorer = {"version": SCORER_VERSION, "kind": "reward", "columns": spec.score_columns}
        tasks.insert(0, Task("columns", "reward", None, _fingerprint("reward", "columns", scorer), scorer))
    if not tasks:
        raise MarginLensError("nothing to score: give a policy, a reward model or score columns")
    return tasks


def _table_current(ws: Workspace, dataset: str, fingerprint: str, dataset_fp: str | None) -> bool:
    manifest = score_manifest(ws, dataset, fingerprint)
    return bool(manifest) and manifest.get("spec", {}).get("dataset_fingerprint") == dataset_fp


@dataclass
class ScoringHandle:
    """What `submit_scoring` returns: the tables (by role) and the job computing the missing ones."""

    workspace: Workspace
    dataset: str
    fingerprints: dict[str, str]
    cached: list[str]
    job: jobs.Job | None

    def progress(self) -> dict[str, Any]:
        """{"state", "done", "total", "pairs_per_s", "tokens_per_s", "eta_s", "message", "job_id"}."""
        if self.job is None:
            return {"state": "done", "done": 1, "total": 1, "pairs_per_s": None, "tokens_per_s": None,
                    "eta_s": 0.0, "message": "all score tables cached", "job_id": None}
        status = self.job.status()
        extra = status.get("extra") or {}
        return {"state": status.get("state"), "done": status.get("done", 0), "total": status.get("total"),
                "pairs_per_s": extra.get("pairs_per_s"), "tokens_per_s": extra.get("tokens_per_s"),
                "eta_s": extra.get("eta_s"), "message": status.get("message", ""), "job_id": self.job.id}


def submit_scoring(ws: Workspace, spec: ScoreSpec, launcher: list[str] | None = None,
                   env: dict[str, str] | None = None) -> ScoringHandle:
    """Start (or join, or skip when cached) the scoring of `spec.dataset`. Returns at once."""
    manifest = ws.dataset_manifest(spec.dataset)
    dataset_fp = manifest.get("fingerprint")
    tasks = plan_tasks(spec)
    fingerprints = {t.role: t.fingerprint for t in tasks}
    cached = [t.role for t in tasks if _table_current(ws, spec.dataset, t.fingerprint, dataset_fp)]
    todo = [t for t in tasks if t.role not in cached]
    for task in [t for t in todo if t.role == "columns"]:
        _score_columns(ws, spec.dataset, dataset_fp, task)
        cached.append(task.role)
    todo = [t for t in todo if t.role != "columns"]
    job = None
    if todo:
        params = {
            "dataset": spec.dataset, "dataset_fingerprint": dataset_fp, "tasks": [asdict(t) for t in todo],
            "device": resolve_device(spec.device), "mode": spec.mode, "max_length": spec.max_length,
            "max_prompt_length": spec.max_prompt_length, "batch_size": spec.batch_size,
            "token_budget": spec.token_budget,
            "trust_remote_code": sorted(m for m in spec.trust_remote_code if m in {t.model for t in todo}),
        }
        job = jobs.submit(ws, "score", params, env=env, launcher=launcher)
    return ScoringHandle(ws, spec.dataset, fingerprints, cached, job)


def _score_columns(ws: Workspace, dataset: str, dataset_fp: str | None, task: Task) -> None:
    import pyarrow as pa
    from marginlens.core.scoring.rewards import column_rewards

    pairs = ws.load_pairs(dataset)
    rows = pairs.select_columns(["pair_id", "source_row", "score_chosen", "score_rejected", "source_json"])
    rewards = column_rewards(rows.to_list(), task.scorer["columns"], dataset)
    table = pa.table({"pair_id": rows["pair_id"], "chosen_reward": [r.chosen_reward for r in rewards],
                      "rejected_reward": [r.rejected_reward for r in rewards],
                      "truncated": [False] * len(rewards)})
    save_score_table(ws, dataset, task.fingerprint, "reward", _unique(table), f"columns:{task.scorer['columns']}",
                     {**task.scorer, "role": "columns", "dataset_fingerprint": dataset_fp})


def _unique(table: Any) -> Any:
    """One row per pair_id (a dataset can hold the same pair twice; both score the same)."""
    import pyarrow.compute as pc

    ids = table.column("pair_id").to_pylist()
    first = {pid: i for i, pid in reversed(list(enumerate(ids)))}
    keep = sorted(first.values())
    return table.take(pc.cast(keep, "int64")) if len(keep) != len(ids) else table


# ------------------------------------------------------------------------------------------------
# The worker
# ------------------------------------------------------------------------------------------------
class _Progress:
    """Pairs done across tasks and ranks, throughput and ETA, reported through the job context.

    Every rank writes its own count to results/progress-rankR.json; rank 0 adds them up, so the
    status shows the whole job's progress under scale-out too.
    """

    def __init__(self, ctx: jobs.JobContext, total: int):
        self.ctx, self.total = ctx, total
        self.done = self.done_at_start = 0
        self.tokens = 0
        self.first: float | None = None
        self.last_file = 0.0
        self.path = ctx.results_dir / f"progress-rank{ctx.rank}.json"

    def begin(self) -> None:
        """Throughput counts from when scoring starts, not from the model load."""
        if self.first is None:
            self.first = time.monotonic()

    def add(self, pairs: int, tokens: int = 0, computed: bool = True, **extra: Any) -> None:
        self.done += pairs
        if computed:
            self.tokens += tokens
        else:
            self.done_at_start += pairs  # skipped (already written): not part of this run's throughput
        now = time.monotonic()
        if now - self.last_file > 0.5 or self.done >= self.total:
            write_json(self.path, {"done": self.done, "tokens": self.tokens})
            self.last_file = now
        done = self.done
        if self.ctx.world_size > 1:
            done = sum((read_json(p) or {}).get("done", 0) for p in self.ctx.results_dir.glob("progress-rank*.json"))
            done = max(done, self.done)
        elapsed = max(now - self.first, 1e-6) if self.first is not None else 0.0
        rate = (self.done - self.done_at_start) / elapsed * self.ctx.world_size if elapsed else 0.0
        grand_total = self.total * self.ctx.world_size if self.ctx.world_size > 1 else self.total
        self.ctx.progress(done, grand_total, pairs_per_s=round(rate, 3),
                          tokens_per_s=round(self.tokens / elapsed * self.ctx.world_size, 1) if elapsed else 0.0,
                          eta_s=round((grand_total - done) / rate, 1) if rate > 0 else None, **extra)


def _written_ids(folder: Path) -> set[str]:
    import pyarrow.parquet as pq

    ids: set[str] = set()
    for part in folder.glob("part-*.parquet"):
        ids.update(pq.read_table(part, columns=["pair_id"]).column("pair_id").to_pylist())
    return ids


class _PartWriter:
    """Buffers result rows and writes them as atomic parquet parts (at most every FLUSH_SECONDS)."""

    def __init__(self, folder: Path, rank: int, kind: str):
        self.folder, self.rank, self.kind = folder, rank, kind
        self.rows: list[dict[str, Any]] = []
        self.last = time.monotonic()
        self.seq = len(list(folder.glob(f"part-rank{rank}-*.parquet")))

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        if time.monotonic() - self.last >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.rows:
            table = pa.Table.from_pylist(self.rows, schema=SCHEMAS[self.kind])
            # A timestamp in the name: a resumed run never overwrites the parts of an earlier one.
            name = f"part-rank{self.rank}-{self.seq:06d}-{time.time_ns()}.parquet"
            write_with(self.folder / name, lambda p: pq.write_table(table, p))
            self.seq += 1
            self.rows = []
        self.last = time.monotonic()


def _row(kind: str, pid: str, result: Any, truncated: bool) -> dict[str, Any]:
    if kind == "logprob":
        return {"pair_id": pid, "chosen_logp": result.chosen_logp, "chosen_ntok": result.chosen_ntok,
                "rejected_logp": result.rejected_logp, "rejected_ntok": result.rejected_ntok, "truncated": truncated}
    return {"pair_id": pid, "chosen_reward": result.chosen_reward, "rejected_reward": result.rejected_reward,
            "truncated": truncated}


def _load_scorer(task: dict[str, Any], params: dict[str, Any], device: str, token_budget: int | None) -> Any:
    from marginlens.core.scoring.logprobs import ImplicitScorer
    from marginlens.core.scoring.models import load_causal_lm, load_reward_model
    from marginlens.core.scoring.rewards import RewardScorer

    max_pairs = params["batch_size"] if isinstance(params["batch_size"], int) else None  # None: per device
    options = {"max_length": params["max_length"], "max_prompt_length": params["max_prompt_length"],
               "token_budget": token_budget, "max_pairs": max_pairs}
    if task["kind"] == "logprob":
        model, tokenizer, _ = load_causal_lm(task["model"], device=device, dtype=task["scorer"]["dtype"])
        return ImplicitScorer(model, tokenizer, mode=params["mode"], **options)
    model, tokenizer, _ = load_reward_model(task["model"], device=device, dtype=task["scorer"]["dtype"],
                                            trust_remote_code=task["model"] in params.get("trust_remote_code", []))
    return RewardScorer(model, tokenizer, **options)


def run(ctx: jobs.JobContext) -> dict[str, Any]:
    """Job entry point (core.jobs.KINDS["score"])."""
    params, ws = ctx.params, ctx.workspace
    dataset = params["dataset"]
    if ws.dataset_manifest(dataset).get("fingerprint") != params["dataset_fingerprint"]:
        raise MarginLensError(f"dataset {dataset!r} was re-imported after this job was submitted; submit again")
    pairs = ws.load_pairs(dataset)
    shard = list(range(ctx.rank, len(pairs), ctx.world_size))
    device = params["device"]
    if device.startswith("cuda") and ctx.world_size > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', ctx.rank))}"
    tasks = params["tasks"]
    progress = _Progress(ctx, len(shard) * len(tasks))
    progress.add(0)
    summary: dict[str, Any] = {"dataset": dataset, "tables": {}, "truncated": {}}
    for task in tasks:
        fingerprint = task["fingerprint"]
        folder = ctx.results_dir / fingerprint
        folder.mkdir(parents=True, exist_ok=True)
        if _table_current(ws, dataset, fingerprint, params["dataset_fingerprint"]):
            progress.add(len(shard), computed=False)
        else:
            _score_shard(ctx, task, params, pairs, shard, device, folder, progress)
            write_json(folder / f"finished-rank{ctx.rank}.json", {"pairs": len(shard)})
            if ctx.is_main:
                _merge(ctx, task, params, pairs, folder)
                progress.add(0, computed=False)  # all ranks finished: report their final counts
        manifest = score_manifest(ws, dataset, fingerprint) or {}
        summary["tables"][task["role"]] = fingerprint
        summary["truncated"][task["role"]] = manifest.get("spec", {}).get("truncated_pairs")
    return summary


def _score_shard(ctx: jobs.JobContext, task: dict[str, Any], params: dict[str, Any], pairs: Any, shard: list[int],
                 device: str, folder: Path, progress: _Progress) -> None:
    written = _written_ids(folder)
    # The batch plan must be the same on every resume for identical numbers: keep the first budget.
    plan = read_json(folder / f"plan-rank{ctx.rank}.json") or {}
    scorer = None
    writer = _PartWriter(folder, ctx.rank, task["kind"])
    truncated = 0
    for start in range(0, len(shard), CHUNK_PAIRS):
        ctx.check_cancel()
        chunk = pairs.select(shard[start : start + CHUNK_PAIRS])
        ids = chunk["pair_id"]
        if all(pid in written for pid in ids):
            progress.add(len(ids), computed=False)
            continue
        if scorer is None:
            ctx.log(f"loading {task['role']} model {task['model']} on {device}")
            scorer = _load_scorer(task, params, device, plan.get("token_budget") or params.get("token_budget"))
            if not plan:
                plan = {"token_budget": scorer.token_budget}
                write_json(folder / f"plan-rank{ctx.rank}.json", plan)
            ctx.log(f"scoring {len(shard)} pairs, token budget {scorer.token_budget}")
            progress.begin()
        rows = chunk.select_columns(["prompt", "chosen", "rejected"])
        tokenized = scorer.tokenize(rows["prompt"], rows["chosen"], rows["rejected"])
        for batch in scorer.plan(tokenized):
            ctx.check_cancel()
            if all(ids[i] in written for i in batch):
                progress.add(len(batch), computed=False)
                continue
            tokens = sum(tokenized[i].n_tokens for i in batch)
            for indices, results in scorer.iter_scored(tokenized, [batch]):
                new = [(ids[i], r, tokenized[i].truncated) for i, r in zip(indices, results, strict=True)
                       if ids[i] not in written]
                writer.add(_row(task["kind"], pid, r, t) for pid, r, t in new)
                written.update(pid for pid, _, _ in new)
                truncated += sum(t for _, _, t in new)
            progress.add(len(batch), tokens, task=task["role"])
    writer.flush()
    if scorer is not None:
        ctx.log(f"{task['role']}: scored this rank's shard ({truncated} newly scored pairs truncated)")


def _merge(ctx: jobs.JobContext, task: dict[str, Any], params: dict[str, Any], pairs: Any, folder: Path) -> None:
    """Rank 0: wait until every rank finished this task, then join the parts into the score table."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    while len(list(folder.glob("finished-rank*.json"))) < ctx.world_size:
        ctx.check_cancel()
        time.sleep(0.2)
    parts = sorted(folder.glob("part-*.parquet"))
    schema = SCHEMAS[task["kind"]]
    table = pa.concat_tables([pq.read_table(p) for p in parts]) if parts else schema.empty_table()
    table = _unique(table.cast(schema))
    order = {pid: i for i, pid in enumerate(pairs["pair_id"])}
    missing = set(order) - set(table.column("pair_id").to_pylist())
    if missing:
        raise MarginLensError(f"{len(missing)} pairs have no {task['role']} scores after all ranks finished")
    positions = [order[pid] for pid in table.column("pair_id").to_pylist()]
    table = table.take(pc.cast(sorted(range(len(positions)), key=positions.__getitem__), "int64"))
    n_truncated = int(pc.sum(table.column("truncated")).as_py() or 0)
    spec = {**task["scorer"], "role": task["role"], "dataset_fingerprint": params["dataset_fingerprint"],
            "truncated_pairs": n_truncated}
    save_score_table(ctx.workspace, params["dataset"], task["fingerprint"], task["kind"], table, task["model"], spec)
    ctx.log(f"{task['role']}: wrote score table {task['fingerprint']} ({table.num_rows} pairs, "
            f"{n_truncated} truncated)")
