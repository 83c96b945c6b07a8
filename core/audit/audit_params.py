"""The parameters of one audit job: what is judged (the sampled pair ids per subset), by which endpoint and
prompt version, within which budget.

`to_dict` is the job's spec.json "params" and what core.jobs.job_id_for hashes, so it must stay exactly
the dict earlier versions wrote: the same settings then give the same job id, and a resubmission resumes
the job instead of paying for a second one. `from_dict` reads any stored spec back, also one whose
prompt version is no longer current (its report must stay readable); only `audit_params`, which builds a
new audit, validates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from marginlens.core.audit.judge_prompt import ORDERS, PROMPT_VERSION
from marginlens.core.audit.subsets import unique_pairs
from marginlens.core.chat_client import Endpoint, RetryPolicy, public_url
from marginlens.core.errors import MarginLensError
from marginlens.core.verdicts import VerdictStore, round_of

DEFAULT_CONCURRENCY = 4

Judgment = tuple[str, str]  # (pair_id, order)


@dataclass(frozen=True)
class AuditParams:
    """The job spec of an audit. Holds no key (the key travels in the worker's environment only)."""

    dataset: str
    samples: Mapping[str, tuple[str, ...]]  # subset name -> sampled pair ids
    endpoint: Endpoint
    max_calls: int | None = None
    max_tokens: int | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    prompt_version: str = PROMPT_VERSION
    reask: int = 0  # >0: ask again, as this round, the judgments whose stored answer was off-format

    def __post_init__(self) -> None:
        object.__setattr__(self, "samples", {name: tuple(ids) for name, ids in self.samples.items()})

    @property
    def judge_model(self) -> str:
        return self.endpoint.model

    @property
    def pair_ids(self) -> list[str]:
        return unique_pairs(self.samples)

    def pending(self, store: VerdictStore) -> list[Judgment]:
        """The (pair, order) judgments of this audit that the verdict store does not hold yet; for a re-ask,
        also those whose stored answer is off-format and from an earlier round."""
        model, version = self.endpoint.model, self.prompt_version
        if not self.reask:
            done = store.keys()
            return [(pid, order) for pid in self.pair_ids for order in ORDERS
                    if (pid, model, version, order) not in done]
        stored = {(pid, order): store.get((pid, model, version, order)) for pid in self.pair_ids for order in ORDERS}
        return [judgment for judgment, record in stored.items()
                if record is None or (not record["valid"] and round_of(record) < self.reask)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "samples": {name: list(ids) for name, ids in self.samples.items()},
            # top_p only when set: the audits written before Endpoint had it keep their job ids
            "endpoint": {k: v for k, v in asdict(self.endpoint).items() if k != "top_p" or v is not None},
            "max_calls": self.max_calls,
            "max_tokens": self.max_tokens,
            "concurrency": self.concurrency,
            "retry": asdict(self.retry),
            "prompt_version": self.prompt_version,
            # only when set: the audits written before re-asks existed keep their job ids
            **({"reask": self.reask} if self.reask else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditParams:
        """A stored spec's params; keys it lacks take the defaults `audit_params` gives them."""
        return cls(
            dataset=data["dataset"],
            samples=data["samples"],
            endpoint=Endpoint(**data["endpoint"]),
            max_calls=data.get("max_calls"),
            max_tokens=data.get("max_tokens"),
            concurrency=data.get("concurrency", DEFAULT_CONCURRENCY),
            retry=RetryPolicy(**data.get("retry", {})),
            prompt_version=data.get("prompt_version", PROMPT_VERSION),
            reask=int(data.get("reask") or 0),
        )


def reask_params(store: VerdictStore, params: AuditParams) -> AuditParams | None:
    """The audit that asks the judge again for this audit's off-format answers, as the next round (a new
    job, charged like any call); None when no stored answer of it is off-format."""
    model, version = params.endpoint.model, params.prompt_version
    invalid = [r for pid in params.pair_ids for order in ORDERS
               if (r := store.get((pid, model, version, order))) is not None and not r["valid"]]
    if not invalid:
        return None
    return replace(params, reask=max(round_of(r) for r in invalid) + 1)


def audit_params(
    dataset: str,
    samples: Mapping[str, Sequence[str]],
    endpoint: Endpoint,
    max_calls: int | None = None,
    max_tokens: int | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    retry: RetryPolicy | None = None,
    prompt_version: str = PROMPT_VERSION,
) -> AuditParams:
    """The parameters of a new audit, checked before anything is stored or paid for."""
    if prompt_version != PROMPT_VERSION:
        raise MarginLensError(f"prompt version {prompt_version!r} is not available (current: {PROMPT_VERSION})")
    if concurrency < 1:
        raise MarginLensError(f"concurrency must be at least 1, got {concurrency}")
    if not endpoint.model:
        raise MarginLensError("the judge model name is empty")
    if endpoint.base_url and public_url(endpoint.base_url) != endpoint.base_url:
        raise MarginLensError("put the API key in OPENAI_API_KEY, not in the base URL (it would be stored)")
    if not unique_pairs(samples):
        raise MarginLensError("nothing to audit: every subset is empty")
    return AuditParams(dataset, {name: tuple(ids) for name, ids in samples.items()}, endpoint, max_calls,
                       max_tokens, int(concurrency), retry or RetryPolicy(), prompt_version)
