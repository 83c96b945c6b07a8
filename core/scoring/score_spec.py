"""What to score (ScoreSpec), the tasks it plans into, and the parameters of the job that runs them.

A task is one score table to produce: a role (policy, reference, or the explicit source's) filled by a
configured scorer (core.scoring.scorers) under its fingerprint -- model identity (content hash of a
local folder, or the Hub commit), dtype, tokenisation mode, max lengths, scorer version. Planning
hashes files but loads no model.

ScoreJobParams is the job's JSON (jobs/JOB_ID/spec.json "params"). Its layout is the one job ids
hash (core.jobs.job_id_for): the same ScoreSpec must give the same job, across versions too, so a
resubmitted spec joins or resumes its job. Keep `to_json` byte-for-byte stable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from marginlens.core.data.pair_sample import DEFAULT_SEED
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.models import DEFAULT_POLICY
from marginlens.core.scoring.scorers import RunOptions, Scorer, scorer_class, scorer_for_role
from marginlens.core.scoring.tokenization import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_MAX_PROMPT_LENGTH,
    MODES,
    check_lengths,
)

IMPLICIT_SCORER = "logprob"  # the implicit margin is the policy's (and reference's) log-probs, by definition


@dataclass
class ScoreSpec:
    """What to score. `policy=None` skips the implicit margin; `explicit` names the explicit-margin scorer
    (one with an ExplicitOption: "reward_model", "columns", ...) and `explicit_value` its argument (a
    reward model, score columns, ...; None: the scorer's default)."""

    dataset: str
    policy: str | None = DEFAULT_POLICY
    reference: str | None = None
    explicit: str | None = None
    explicit_value: str | None = None
    device: str = "auto"
    max_length: int = DEFAULT_MAX_LENGTH
    max_prompt_length: int = DEFAULT_MAX_PROMPT_LENGTH
    mode: str = "clean"
    dtype: str = "auto"  # auto, float32 or bfloat16 (core.scoring.models.dtype_for); in each table's fingerprint
    batch_size: int | str = "auto"  # most pairs per batch; "auto": as many as the token budget allows
    token_budget: int | None = None  # padded tokens per batch; None: chosen from the device
    trust_remote_code: list[str] = field(default_factory=list)  # model specs the user opted in for
    sample: int | None = None  # score only this many pairs (core.data.pair_sample); None: all of them
    seed: int = DEFAULT_SEED  # of the sample
    chat_template: str | None = None  # Jinja text replacing the policy/reference tokenizer's template (--chat-template)
    scorer_options: dict[str, Any] = field(default_factory=dict)  # the explicit scorer's own (LLM rating's endpoint)

    def __post_init__(self) -> None:
        # Checked here, not at submit: a form or a flag parser gets its one-line error before any work.
        if self.sample is not None and self.sample < 1:
            raise MarginLensError(f"the sample size must be at least 1 pair, got {self.sample}")
        if self.explicit is None:
            return
        cls = scorer_class(self.explicit)
        if cls.option is None:
            raise MarginLensError(f"scorer {self.explicit!r} is not an explicit-margin source")
        self.explicit_value = self.explicit_value or cls.option.default
        if not self.explicit_value:
            raise MarginLensError(f"explicit source {cls.option.label!r}: enter {cls.option.hint}")


@dataclass(frozen=True)
class Task:
    """One score table to produce: `role` filled by `scorer` (configured, not set up)."""

    role: str
    scorer: Scorer[Any]
    fingerprint: str

    @classmethod
    def plan(cls, role: str, scorer: Scorer[Any]) -> Task:
        return cls(role, scorer, scorer.fingerprint())

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "kind": self.scorer.table_kind, "model": self.scorer.model,
                "fingerprint": self.fingerprint, "scorer": self.scorer.fingerprint_inputs()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], trusted: tuple[str, ...] = ()) -> Task:
        scorer = scorer_for_role(data["role"]).from_fingerprint_inputs(data["scorer"], trusted)
        if scorer.fingerprint_inputs() != data["scorer"]:
            # The table would be recorded under inputs it was not computed with.
            raise MarginLensError(f"the {data['role']} task of this job was planned by another version of its "
                                  "scorer; submit the scoring again")
        return cls(data["role"], scorer, data["fingerprint"])


def plan_tasks(spec: ScoreSpec) -> list[Task]:
    """The tasks of a spec with their fingerprints (cheap: hashes files, loads no model). Inline tasks
    first, then reference, explicit, policy: "the newest logprob table" is then the policy's."""
    from marginlens.core.scoring.models import resolve_device

    if spec.reference and not spec.policy:
        raise MarginLensError("a reference model only makes sense with a policy (the DPO form compares the two)")
    if spec.mode not in MODES:
        raise MarginLensError(f"unknown tokenisation mode {spec.mode!r} (expected one of {', '.join(MODES)})")
    check_lengths(spec.max_length, spec.max_prompt_length)
    resolve_device(spec.device)  # an unusable device fails here, before anything is hashed or computed
    implicit = scorer_class(IMPLICIT_SCORER)
    planned: list[tuple[str, Scorer[Any]]] = []
    if spec.reference:
        planned.append(("reference", implicit.configure(spec, spec.reference)))
    if spec.explicit:
        explicit = scorer_class(spec.explicit)
        planned.append((explicit.roles[0], explicit.configure(spec, spec.explicit_value or "")))
    if spec.policy:
        planned.append(("policy", implicit.configure(spec, spec.policy)))
    if not planned:
        raise MarginLensError("nothing to score: give a policy or an explicit-margin source")
    tasks = [Task.plan(role, scorer) for role, scorer in planned]
    return sorted(tasks, key=lambda t: not t.scorer.inline)


@dataclass(frozen=True)
class ScoreJobParams:
    """A score job's parameters. `mode` and the max lengths repeat what each task's scorer holds: they
    stay in the JSON because job ids hash it."""

    dataset: str
    dataset_fingerprint: str | None
    tasks: tuple[Task, ...]
    device: str
    mode: str
    max_length: int
    max_prompt_length: int
    batch_size: int | str
    token_budget: int | None
    trust_remote_code: tuple[str, ...]  # of the tasks' models, those the user allowed to run their own code
    sample: int | None = None  # score only the seeded sample of this many pairs (core.data.pair_sample)
    seed: int = DEFAULT_SEED

    @classmethod
    def for_tasks(cls, spec: ScoreSpec, dataset_fingerprint: str | None, tasks: list[Task]) -> ScoreJobParams:
        from marginlens.core.scoring.models import canonical_spec, resolve_device

        models = {t.scorer.model for t in tasks}
        return cls(spec.dataset, dataset_fingerprint, tuple(tasks), resolve_device(spec.device), spec.mode,
                   spec.max_length, spec.max_prompt_length, spec.batch_size, spec.token_budget,
                   tuple(sorted(m for m in map(canonical_spec, spec.trust_remote_code) if m in models)))

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "dataset_fingerprint": self.dataset_fingerprint,
                "tasks": [t.to_json() for t in self.tasks], "device": self.device, "mode": self.mode,
                "max_length": self.max_length, "max_prompt_length": self.max_prompt_length,
                "batch_size": self.batch_size, "token_budget": self.token_budget,
                "trust_remote_code": list(self.trust_remote_code),
                # only when sampling, so a whole-dataset job keeps its JSON and so its job id
                **({"sample": self.sample, "seed": self.seed} if self.sample is not None else {})}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScoreJobParams:
        trusted = tuple(data.get("trust_remote_code") or ())
        return cls(data["dataset"], data.get("dataset_fingerprint"),
                   tuple(Task.from_json(t, trusted) for t in data["tasks"]), data["device"], data["mode"],
                   data["max_length"], data["max_prompt_length"], data["batch_size"], data.get("token_budget"),
                   trusted, sample=data.get("sample"), seed=data.get("seed", DEFAULT_SEED))

    def run_options(self, device: str) -> RunOptions:
        max_pairs = self.batch_size if isinstance(self.batch_size, int) else None  # None: chosen per device
        return RunOptions(device=device, max_pairs=max_pairs, token_budget=self.token_budget, dataset=self.dataset)
