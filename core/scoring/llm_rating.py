"""LLM rating as reward: every response rated on a fixed, versioned rubric (core.scoring.rating_rubric) by
any OpenAI-compatible model, the way UltraFeedback's scores were made. The explicit margin is then
rating(chosen) - rating(rejected), with no reward model on this machine.

    marginlens score hh --policy none --llm-rating gpt-4o-mini                  # OPENAI_API_KEY from the env
    marginlens score hh --llm-rating ./SmolLM2 --rating-url http://127.0.0.1:8000/v1 --rating-max-calls 500

Asking goes through the audit's client (core.chat_client: retries with backoff, a call and token
budget, the key only in memory). What is paid for is kept:
  ratings  workspace/ratings/FINGERPRINT/ratings.jsonl, one fsynced line per rated response, keyed by
           the request's hash; shared by every job, dataset and resume under the same model, endpoint
           and rubric. A response found there is never asked again, so one job, its resumes and jobs
           run one after another pay for a response once. Jobs running at the same time ask without
           holding any lock (one job never waits out another's requests): two of them may both pay
           for a response neither had found stored, and then only the first answer is stored and
           both use it (the append is under an exclusive flock that re-reads the file first).
  ledger   the job's results folder, requests.ledger: every request sent, so a killed and resumed job
           keeps counting its budget from what it really spent. It is one process's count, which is
           why a job rates in one process (scale-out with --processes is refused).
An answer with no rating on the scale is stored as invalid (its raw text kept) and never asked again;
its reward is NaN (the pair has no explicit margin) and the table's `invalid_ratings` column counts it.
The job counts valid and invalid ratings as it goes (its status extra "ratings_valid", "ratings_invalid")
and at the end (`summarize`, over the pairs the job scored): when more than half are invalid the job fails
with a message quoting two of the raw answers. The table is kept either way, but the same model at the
same endpoint answers from the store: asking again means another rater (model or endpoint), a new table.

The table's fingerprint, and with it the ratings folder, holds the model, the endpoint's public URL when
one is set (local servers reuse model names: two servers' ratings never mix), the rubric version and the
answer length; the timeout and budget change how it is asked, not what, and stay out of it (they are
in the job's JSON).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from marginlens.core.chat_client import (
    KEY_ENV,
    Budget,
    Completion,
    Endpoint,
    JudgeClient,
    RequestLedger,
    RetryPolicy,
    ask_once,
    public_url,
)
from marginlens.core.errors import MarginLensError
from marginlens.core.keyed_log import KeyedLog
from marginlens.core.scoring.rating_rubric import RUBRIC_VERSION, parse_rating, rating_messages, rubric_sha256
from marginlens.core.scoring.scorers import (
    SCORER_VERSION,
    ExplicitOption,
    PairBatch,
    RunOptions,
    Scorer,
    ScoringSettings,
    register,
    slug,
)

TABLE_PREFIX = "reward-rating-"  # every rating table's fingerprint starts so (LLMRatingScorer.fingerprint)
QUOTE_CHARS = 40  # of a raw answer quoted in a message
DEFAULT_PAIRS_PER_BATCH = 8  # a batch is written to the job's parts when done: keep progress visible
OPTION_KEYS = ("base_url", "max_calls", "max_tokens", "timeout", "max_output_tokens")
# Every rank would keep its own budget: N processes could spend N times --rating-max-calls.
WORLD_REFUSAL = ("LLM rating runs in one process (its call budget is one process's count): score it without "
                 "--processes")


def check_base_url(base_url: str | None) -> str | None:
    """An http(s) URL without credentials in it (the key travels in OPENAI_API_KEY, never in a URL that
    a job's JSON would store)."""
    if not base_url:
        return None
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise MarginLensError(f"rating endpoint {base_url!r}: expected an http(s) URL such as http://127.0.0.1:8000/v1")
    if "@" in parts.netloc or parts.query:
        raise MarginLensError(f"rating endpoint {public_url(base_url)!r}: put the key in ${KEY_ENV}, not in the URL")
    return base_url.rstrip("/")


@dataclass(frozen=True)
class LLMRatingConfig:
    model: str  # the rater's model name at the endpoint
    rubric_version: str = RUBRIC_VERSION
    max_output_tokens: int = 32
    base_url: str | None = None  # None: the openai package's default (api.openai.com)
    timeout: float = 60.0
    max_calls: int | None = None  # the job's request budget (retries count)
    max_tokens: int | None = None  # the job's token budget


@register
class LLMRatingScorer(Scorer[LLMRatingConfig]):
    """r(x, y) = an LLM's rating of y on the rubric; rewards NaN where the answer had no valid rating."""

    name = "llm_rating"
    roles = ("llm_rating",)
    table_kind = "reward"
    config_type = LLMRatingConfig
    option = ExplicitOption("--llm-rating", "MODEL",
                            f"explicit margin: each response rated 1-10 by MODEL on rubric {RUBRIC_VERSION} at any "
                            f"OpenAI-compatible endpoint (--rating-url; key from ${KEY_ENV})",
                            "LLM rating", "the rater's model name at the endpoint")

    @classmethod
    def configure(cls, spec: ScoringSettings, value: str) -> LLMRatingScorer:
        options = dict(getattr(spec, "scorer_options", None) or {})
        unknown = sorted(set(options) - set(OPTION_KEYS))
        if unknown:
            raise MarginLensError(f"LLM rating: unknown option(s) {', '.join(unknown)} (known: {', '.join(OPTION_KEYS)})")
        for name in ("max_calls", "max_tokens", "max_output_tokens"):
            if options.get(name) is not None and int(options[name]) < 1:
                raise MarginLensError(f"LLM rating: {name.replace('_', '-')} must be a positive number")
        if not value.strip():
            raise MarginLensError("LLM rating: give the rater's model name")
        options["base_url"] = check_base_url(options.get("base_url"))
        return cls(LLMRatingConfig(model=value.strip(), **{k: v for k, v in options.items() if v is not None}))

    def fingerprint(self) -> str:
        # What the numbers depend on only: the same ratings wherever and however patiently they were asked.
        what = {"version": SCORER_VERSION, "kind": self.table_kind, "scorer": self.name, "model": self.config.model,
                "rubric_version": self.config.rubric_version, "max_output_tokens": self.config.max_output_tokens}
        if self.config.base_url:  # the same model name at another server is another rater
            what["base_url"] = public_url(self.config.base_url)
        digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]
        return f"{TABLE_PREFIX}{slug(self.config.model)}-{digest}"

    @property
    def source(self) -> str:
        return f"llm_rating:{self.config.model}@{self.config.rubric_version}"

    @classmethod
    def output_schema(cls) -> Any:
        import pyarrow as pa
        from marginlens.core.scoring.score_tables import KIND_SCHEMAS

        return KIND_SCHEMAS["reward"].append(pa.field("invalid_ratings", pa.int64()))

    # -- running ----------------------------------------------------------------------------------
    def setup(self, run: RunOptions) -> None:
        super().setup(run)
        if not run.workspace:
            raise MarginLensError("LLM rating needs a workspace to keep its ratings in")
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # set by the launcher (core.jobs), as for the job's ranks
            raise MarginLensError(WORLD_REFUSAL)
        # One answer per request key, across jobs and resumes: a rating is paid for once.
        self.store = KeyedLog(Path(run.workspace) / "ratings" / self.fingerprint() / "ratings.jsonl",
                              key_of=lambda record: record["key"])
        ledger = RequestLedger(Path(run.state_dir) / "requests.ledger") if run.state_dir else None
        budget = Budget(self.config.max_calls, self.config.max_tokens)
        if ledger is not None:
            budget.spent = ledger.spent()
        endpoint = Endpoint(self.config.model, self.config.base_url, timeout=self.config.timeout,
                            max_output_tokens=self.config.max_output_tokens)
        self.client = JudgeClient(endpoint, os.environ.get(KEY_ENV), budget, RetryPolicy(), ledger)
        # this worker's ratings so far (pairs skipped as already written are not counted: the summary is)
        self.counted = {"ratings_valid": 0, "ratings_invalid": 0}

    def plan(self, prepared: list[Any]) -> list[list[int]]:
        size = self.run.max_pairs or DEFAULT_PAIRS_PER_BATCH
        return [list(range(i, min(i + size, len(prepared)))) for i in range(0, len(prepared), size)]

    def _rate(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        def answer(completion: Completion) -> dict[str, Any]:
            rating = None if completion.malformed else parse_rating(completion.text)
            return {"rating": rating, "valid": rating is not None}

        return ask_once(
            self.store, self.client, messages, answer,
            lambda exc: (f"LLM rating stopped: {exc}; {len(self.store)} ratings are stored and will not be asked "
                         "again: submit with a larger budget to go on"),
            model=self.config.model, rubric_version=self.config.rubric_version, rubric_sha256=rubric_sha256(),
            base_url=public_url(self.config.base_url))

    def compute(self, batch: PairBatch) -> list[dict[str, Any]]:
        out = []
        for row in batch.rows:
            chosen, rejected = (self._rate(rating_messages(row["prompt"], text))
                                for text in (row["chosen"], row["rejected"]))
            value = lambda r: r["rating"] if r["valid"] else math.nan  # noqa: E731
            invalid = int(not chosen["valid"]) + int(not rejected["valid"])
            self.counted["ratings_valid"] += 2 - invalid
            self.counted["ratings_invalid"] += invalid
            out.append({"chosen_reward": value(chosen), "rejected_reward": value(rejected),
                        "invalid_ratings": invalid})
        return out

    # -- reporting (core.scoring.score_job reads these of any scorer that has them) ------------------
    def progress_figures(self) -> dict[str, int]:
        """What the job's status extra shows while it runs (core.job_status: "12 of 16 ratings valid")."""
        return dict(self.counted)

    def summarize(self, workspace: Path, table: Any, pair_ids: list[str], dataset: str) -> tuple[dict[str, Any], str | None]:
        """The ratings of `pair_ids` (the pairs this job scored) in the merged `table`, counted, and the
        warning to fail the job with when more than half of them are invalid (None otherwise)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        mine = table.filter(pc.is_in(table.column("pair_id"), value_set=pa.array(pair_ids, type=pa.string())))
        invalid = int(pc.sum(mine.column("invalid_ratings")).as_py() or 0)
        total = 2 * mine.num_rows
        figures = {"ratings_valid": total - invalid, "ratings_invalid": invalid}
        if not total or 2 * invalid <= total:
            return figures, None
        store = KeyedLog(Path(workspace) / "ratings" / self.fingerprint() / "ratings.jsonl", key_of=lambda r: r["key"])
        raws = list(dict.fromkeys(str(r.get("raw") or "") for r in store.records() if not r.get("valid")))[:2]
        where = f" at {public_url(self.config.base_url)}" if self.config.base_url else ""
        url = f" --rating-url {public_url(self.config.base_url)}" if self.config.base_url else ""
        warning = (
            f"LLM rating: {invalid} of {total} ratings are invalid ({total - invalid} valid): {self.config.model}"
            f"{where} answered off the rubric (a line 'Rating: N', N from 1 to 10), e.g. "
            f"{' and '.join(quote(raw) for raw in raws) or 'nothing'}. The table {self.fingerprint()} is kept, but a "
            "pair with an invalid rating has no explicit margin. These answers are stored and this rater is never "
            "asked them again (resuming asks nothing); to ask again, rate with another model or endpoint (a new "
            f"table): `marginlens score {dataset} --policy none --llm-rating OTHER_MODEL{url}` (or another "
            "--rating-url)")
        return figures, warning


def quote(raw: str) -> str:
    """A raw answer for a message: escaped (newlines, control and bidi characters shown, not acted on) and
    cut to QUOTE_CHARS."""
    text = repr(raw[:QUOTE_CHARS])
    return text + ("..." if len(raw) > QUOTE_CHARS else "")


def is_rating_table(fingerprint: str | None) -> bool:
    """Whether a score table's fingerprint names an LLM-rating table."""
    return bool(fingerprint) and str(fingerprint).startswith(TABLE_PREFIX)
