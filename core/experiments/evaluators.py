"""What an evaluation asks, and the evaluators that score one model's responses on an eval set.

`--eval` text: KIND:TARGET[,OPTION=VALUE...]
  verifier:NAME    the verifier's score of each response (core.experiments.verifiers), in [0, 1]
  reward:MODEL     a reward model's scalar for (prompt, response) (core.scoring.rewards), any scale
  rating:MODEL     an LLM's 1-10 rating on the scorers' rubric (core.scoring.llm_rating), shared with
                   the rating scorer's cache: a response rated once is never asked again
  judge:MODEL      pairwise against the starting model's response to the same prompt, asked in both
                   orders with the audit's judge prompt (core.audit.judge_prompt): a win is preferred in
                   both orders, a loss in neither, a tie otherwise; the score is 1, 0 or 1/2, so the mean
                   is the win rate (wins + ties/2) / n. Identical responses are a tie without asking.
  options: base_url=URL (an OpenAI-compatible endpoint), max_new_tokens=N (generation cap, default 64),
           api_key_env=NAME (the environment variable holding the key; the key itself never goes in),
           max_calls=N (the rating's or judge's request cap per job, retries counted; none by default).

Every judge answer is stored once in workspace/judgments/FINGERPRINT/judgments.jsonl, keyed by the exact
request (core.keyed_log): a resumed or repeated evaluation never pays for an answer twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from marginlens.core.errors import MarginLensError

KINDS = ("verifier", "reward", "rating", "judge")
DEFAULT_MAX_NEW_TOKENS = 64
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Prompts judged at once, each asking its two orders one after the other: at most 4 requests in flight.
JUDGE_CONCURRENCY = 4
OPTIONS = ("base_url", "max_new_tokens", "api_key_env", "max_calls")


@dataclass(frozen=True)
class EvalSpec:
    kind: str  # one of KINDS
    target: str  # the verifier's name, or the model
    base_url: str | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    api_key_env: str | None = None  # the name of the variable, never the key
    max_calls: int | None = None  # requests a rating or judge job may make (retries count); None: no cap

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise MarginLensError(f"--eval: unknown evaluator {self.kind!r} (known: {', '.join(KINDS)})")
        if not self.target.strip():
            raise MarginLensError(f"--eval {self.kind}: name the {'verifier' if self.kind == 'verifier' else 'model'}")
        if self.max_new_tokens < 1:
            raise MarginLensError(f"--eval: max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.api_key_env is not None and not _ENV_NAME.match(self.api_key_env):
            raise MarginLensError("--eval: api_key_env names an environment variable (e.g. OPENAI_API_KEY); "
                                  "never put the key itself in it")
        if self.base_url is not None and self.kind not in ("rating", "judge"):
            raise MarginLensError(f"--eval {self.kind}: base_url is for rating and judge only")
        if self.max_calls is not None and (self.kind not in ("rating", "judge") or self.max_calls < 1):
            raise MarginLensError(f"--eval {self.kind}: max_calls is a positive number, for rating and judge only "
                                  f"(got {self.max_calls})")
        if self.base_url is not None:
            # Here, not only in parse_eval: every way of building a spec (CLI, page, replace, from_dict) is refused
            # a URL with credentials in it, which the job's spec.json would otherwise store.
            from marginlens.core.scoring.llm_rating import check_base_url

            try:
                object.__setattr__(self, "base_url", check_base_url(self.base_url))
            except MarginLensError as exc:
                raise MarginLensError(f"--eval {self.label}: {exc}") from None

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.target}"

    @property
    def asks_llm(self) -> bool:
        return self.kind in ("rating", "judge")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalSpec:
        return cls(**{k: data[k] for k in ("kind", "target", *OPTIONS) if k in data})


def parse_eval(text: str) -> EvalSpec:
    """`verifier:NAME | reward:MODEL | rating:MODEL | judge:MODEL`, each optionally followed by
    `,base_url=URL`, `,max_new_tokens=N`, `,api_key_env=NAME`, `,max_calls=N`. An unknown verifier fails here."""
    head, *options = [part.strip() for part in (text or "").split(",")]
    kind, sep, target = head.partition(":")
    if not sep:
        raise MarginLensError(f"--eval {text!r}: expected KIND:TARGET with KIND one of {', '.join(KINDS)} "
                              "(e.g. verifier:answer-match, judge:gpt-4o-mini)")
    fields: dict[str, Any] = {}
    for option in options:
        name, eq, value = option.partition("=")
        name = name.strip()
        if not eq or name not in OPTIONS or not value.strip():
            raise MarginLensError(f"--eval {text!r}: unknown option {option!r} "
                                  "(known: base_url=URL, max_new_tokens=N, api_key_env=NAME, max_calls=N)")
        fields[name] = value.strip()
    for name in ("max_new_tokens", "max_calls"):
        if name in fields:
            try:
                fields[name] = int(fields[name])
            except ValueError:
                raise MarginLensError(f"--eval {text!r}: {name} must be a whole number") from None
    spec = EvalSpec(kind.strip().lower(), target.strip(), **fields)
    if spec.kind == "verifier":
        from marginlens.core.experiments.verifiers import get_verifier

        get_verifier(spec.target)
    return spec


def evaluator_versions(spec: EvalSpec) -> dict[str, str]:
    """The versions of the rule behind the scores (the verifier's, the rating rubric's, the judge prompt's, with
    the texts' hashes): in the evaluate job's params, so a changed rule is a new job, never a reused result."""
    if spec.kind == "verifier":
        from marginlens.core.experiments.verifiers import get_verifier

        return {"verifier_version": get_verifier(spec.target).version}
    if spec.kind == "rating":
        from marginlens.core.scoring.rating_rubric import RUBRIC_VERSION, rubric_sha256

        return {"rubric_version": RUBRIC_VERSION, "rubric_sha256": rubric_sha256()}
    if spec.kind == "judge":
        from marginlens.core.audit.judge_prompt import PROMPT_VERSION, template_sha256

        return {"prompt_version": PROMPT_VERSION, "prompt_sha256": template_sha256()}
    return {}  # a reward model: its identity is in the params already


def check_llm_endpoint(model: str, base_url: str | None, key_env: str | None,
                       env: Mapping[str, str] | None = None) -> None:
    """An OpenAI-compatible endpoint must answer now (reachable, key accepted; core.audit.endpoint_check), so
    a dead one is said before hours of generation. The key: `env`'s, else this process's, under `key_env`."""
    from marginlens.core.audit.endpoint_check import check_endpoint
    from marginlens.core.chat_client import KEY_ENV, Endpoint

    name = key_env or KEY_ENV
    check_endpoint(Endpoint(model=model, base_url=base_url), (env or {}).get(name) or os.environ.get(name))


def api_key(spec: EvalSpec) -> str | None:
    from marginlens.core.chat_client import KEY_ENV

    return os.environ.get(spec.api_key_env or KEY_ENV)


# ------------------------------------------------------------------------------------------------
# Evaluators: score a chunk of (row, response[, baseline response]) -> one result dict per row:
# {"score": float | None, "valid": bool, ...what the score came from}.
# ------------------------------------------------------------------------------------------------
class VerifierEvaluator:
    def __init__(self, name: str):
        from marginlens.core.experiments.verifiers import get_verifier

        self.verifier = get_verifier(name)

    def evaluate(self, rows: Sequence[dict[str, Any]], responses: Sequence[str],
                 baselines: Sequence[str] | None = None) -> list[dict[str, Any]]:
        out = []
        for row, response in zip(rows, responses, strict=True):
            score = self.verifier.score(response, row)
            if not 0.0 <= score <= 1.0 or math.isnan(score):
                raise MarginLensError(f"verifier {self.verifier.name!r} returned {score} for row id {row['id']!r}; "
                                      "a verifier's score lies in [0, 1]")
            out.append({"score": score, "valid": True, "verifier_version": self.verifier.version})
        return out


class RewardEvaluator:
    """The reward model's scalar for (prompt, response), through the explicit scorer's own tokenisation."""

    def __init__(self, model: str, device: str):
        from marginlens.core.scoring.models import dtype_for, load_reward_model
        from marginlens.core.scoring.rewards import RewardScorer

        class _ResponseRewards(RewardScorer):
            # The pair scorer's rows with only the first response scored: the second is an empty stand-in.
            def score_batch(self, pairs: Sequence[Any]) -> list[float]:
                import torch
                from marginlens.core.scoring.rewards import reward_values

                rows = [p.prompt + p.chosen for p in pairs]
                ids, lengths = self.padded(rows, max(len(r) for r in rows))
                mask = (torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]).long()
                with torch.inference_mode():
                    out = self.model(input_ids=ids, attention_mask=mask)
                return reward_values(out).float().cpu().tolist()

        lm, tokenizer, _ = load_reward_model(model, device=device, dtype=dtype_for(device))
        self.scorer = _ResponseRewards(lm, tokenizer)

    def evaluate(self, rows: Sequence[dict[str, Any]], responses: Sequence[str],
                 baselines: Sequence[str] | None = None) -> list[dict[str, Any]]:
        from marginlens.core.experiments.generation import user_messages

        values = self.scorer.score([user_messages(r) for r in rows], list(responses), [""] * len(rows))
        return [{"score": None, "valid": False} if math.isnan(v) else {"score": float(v), "valid": True} for v in values]


class RatingEvaluator:
    """The rating scorer itself, asked about one response at a time; ratings land in its shared cache."""

    def __init__(self, spec: EvalSpec, workspace: Path, state_dir: Path):
        from marginlens.core.chat_client import KEY_ENV
        from marginlens.core.scoring.llm_rating import LLMRatingConfig, LLMRatingScorer
        from marginlens.core.scoring.scorers import RunOptions

        Path(state_dir).mkdir(parents=True, exist_ok=True)
        key = api_key(spec)
        if key is not None:
            os.environ[KEY_ENV] = key  # this worker's own environment: the scorer reads the key from there
        self.scorer = LLMRatingScorer(LLMRatingConfig(model=spec.target, base_url=spec.base_url,
                                                      max_calls=spec.max_calls))
        self.scorer.setup(RunOptions(workspace=str(workspace), state_dir=str(state_dir)))

    def evaluate(self, rows: Sequence[dict[str, Any]], responses: Sequence[str],
                 baselines: Sequence[str] | None = None) -> list[dict[str, Any]]:
        from marginlens.core.experiments.generation import user_messages
        from marginlens.core.scoring.scorers import PairBatch

        # Rated as both sides of a pair: the second asks nothing, the first answer is stored under the same key.
        batch_rows = [{"prompt": user_messages(r), "chosen": text, "rejected": text} for r, text in zip(
            rows, responses, strict=True)]
        rated = self.scorer.compute(PairBatch([r["id"] for r in rows], batch_rows, batch_rows))
        return [{"score": None, "valid": False} if math.isnan(r["chosen_reward"])
                else {"score": float(r["chosen_reward"]), "valid": True} for r in rated]


def judge_fingerprint(spec: EvalSpec, max_output_tokens: int) -> str:
    from marginlens.core.audit.judge_prompt import PROMPT_VERSION
    from marginlens.core.chat_client import public_url
    from marginlens.core.scoring.scorers import slug

    what = {"model": spec.target, "base_url": public_url(spec.base_url), "prompt_version": PROMPT_VERSION,
            "max_output_tokens": max_output_tokens, "temperature": 0.0}
    return f"{slug(spec.target)}-{hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]}"


def pairwise_outcome(first: bool | None, second: bool | None) -> str | None:
    """From whether the evaluated response was preferred in each order: "win" (both), "loss" (neither),
    "tie" (one of two), None when either answer was invalid."""
    if first is None or second is None:
        return None
    return {2: "win", 1: "tie", 0: "loss"}[int(first) + int(second)]


OUTCOME_SCORES = {"win": 1.0, "tie": 0.5, "loss": 0.0}


class JudgeEvaluator:
    """Pairwise: the evaluated response vs the starting model's, order "AB" (evaluated shown as A), then "BA"."""

    max_output_tokens = 128

    def __init__(self, spec: EvalSpec, workspace: Path, state_dir: Path):
        from marginlens.core.chat_client import Budget, Endpoint, JudgeClient, RequestLedger
        from marginlens.core.keyed_log import KeyedLog

        self.endpoint = Endpoint(spec.target, spec.base_url, max_output_tokens=self.max_output_tokens)
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        ledger = RequestLedger(Path(state_dir) / "judge-requests.ledger")
        # The ledger carries the calls of this job's earlier runs: a resumed job's cap counts them too.
        self.client = JudgeClient(self.endpoint, api_key(spec), Budget(spec.max_calls, spent=ledger.spent()),
                                  ledger=ledger)
        self.store = KeyedLog(Path(workspace) / "judgments" / judge_fingerprint(spec, self.max_output_tokens)
                              / "judgments.jsonl", key_of=lambda record: record["key"])

    def ask(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        from marginlens.core.audit.judge_prompt import PROMPT_VERSION, parse_completion
        from marginlens.core.chat_client import ask_once, public_url

        def answer(completion: Any) -> dict[str, Any]:
            parsed = parse_completion(completion)
            return {"choice": parsed.choice, "valid": parsed.valid, "invalid_reason": parsed.reason}

        return ask_once(
            self.store, self.client, messages, answer,
            lambda exc: (f"judge {self.endpoint.model} stopped: {exc} (max_calls); the answers so far are stored "
                         "and never asked again: submit with a larger max_calls to go on"),
            judge_model=self.endpoint.model, prompt_version=PROMPT_VERSION, base_url=public_url(self.endpoint.base_url))

    def _one(self, row: dict[str, Any], response: str, baseline: str) -> dict[str, Any]:
        from marginlens.core.audit.judge_prompt import build_messages, chosen_position
        from marginlens.core.experiments.generation import user_messages

        if response == baseline:
            return {"score": 0.5, "valid": True, "outcome": "tie", "identical": True, "choices": {}}
        prefers: dict[str, bool | None] = {}
        choices: dict[str, str | None] = {}
        for order in ("AB", "BA"):
            answer = self.ask(build_messages(user_messages(row), response, baseline, order))
            choices[order] = answer["choice"]
            prefers[order] = None if answer["choice"] is None else answer["choice"] == chosen_position(order)
        outcome = pairwise_outcome(prefers["AB"], prefers["BA"])
        return {"score": None if outcome is None else OUTCOME_SCORES[outcome], "valid": outcome is not None,
                "outcome": outcome, "identical": False, "choices": choices}

    def evaluate(self, rows: Sequence[dict[str, Any]], responses: Sequence[str],
                 baselines: Sequence[str] | None = None) -> list[dict[str, Any]]:
        if baselines is None:
            raise MarginLensError("the pairwise judge needs the starting model's responses")
        with ThreadPoolExecutor(max_workers=JUDGE_CONCURRENCY) as pool:
            return list(pool.map(self._one, rows, responses, baselines))


def make_evaluator(spec: EvalSpec, workspace: Path, state_dir: Path, device: str) -> Any:
    if spec.kind == "verifier":
        return VerifierEvaluator(spec.target)
    if spec.kind == "reward":
        return RewardEvaluator(spec.target, device)
    if spec.kind == "rating":
        return RatingEvaluator(spec, workspace, state_dir)
    return JudgeEvaluator(spec, workspace, state_dir)
