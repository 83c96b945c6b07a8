"""The built-in scorers (core.scoring.scorers protocol): the implicit margin's log-prob scorer, and the
explicit margin's reward-model and dataset-column scorers.

Each is a thin class over the computation it registers: ImplicitScorer (core.scoring.logprobs),
RewardScorer and column_rewards (core.scoring.rewards). A new in-package scorer is a class here (or in
a module added to scorers.SCORER_MODULES) plus its test.
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.logprobs import BatchedScorer, ImplicitScorer
from marginlens.core.scoring.rewards import DEFAULT_COLUMNS, RewardScorer, column_rewards
from marginlens.core.scoring.scorers import (
    ConfigT,
    ExplicitOption,
    PairBatch,
    RunOptions,
    Scorer,
    ScoringSettings,
    register,
)
from marginlens.core.scoring.tokenization import TokenizedPair


# ------------------------------------------------------------------------------------------------
# Model scorers: a model loaded at setup, pairs tokenized and length-bucketed by a BatchedScorer
# ------------------------------------------------------------------------------------------------
class ModelScorer(Scorer[ConfigT]):
    """A scorer backed by a core.scoring.logprobs.BatchedScorer; subclasses load it in `load_engine`.
    Configs hold model, identity, dtype, max_length and max_prompt_length."""

    needs_device = True

    def __init__(self, config: ConfigT) -> None:
        super().__init__(config)
        self.engine: BatchedScorer | None = None

    @staticmethod
    def model_fields(spec: ScoringSettings, model: str) -> dict[str, Any]:
        """The config fields every model scorer shares, from the user's spec (hashes the model's files)."""
        from marginlens.core.scoring.models import canonical_spec, dtype_for, model_identity, resolve_device

        model = canonical_spec(model)
        return {"model": model, "identity": model_identity(model, ModelScorer.trusted(spec, model)),
                "dtype": dtype_for(resolve_device(spec.device), spec.dtype), "max_length": spec.max_length,
                "max_prompt_length": spec.max_prompt_length}

    @staticmethod
    def trusted(spec: ScoringSettings, model: str) -> bool:
        """Whether the user allowed `model` to run its own code, however either side spelled the folder."""
        from marginlens.core.scoring.models import canonical_spec

        return canonical_spec(model) in {canonical_spec(m) for m in spec.trust_remote_code}

    def engine_options(self) -> dict[str, Any]:
        config: Any = self.config
        return {"max_length": config.max_length, "max_prompt_length": config.max_prompt_length,
                "token_budget": self.run.token_budget, "max_pairs": self.run.max_pairs}

    @abstractmethod
    def load_engine(self) -> BatchedScorer:
        """Load the model onto `self.run.device` and wrap it."""

    def setup(self, run: RunOptions) -> None:
        super().setup(run)
        self.engine = self.load_engine()

    def _ready(self) -> BatchedScorer:
        if self.engine is None:
            raise MarginLensError(f"scorer {self.name!r} used before setup()")
        return self.engine

    def plan_settings(self) -> dict[str, Any]:
        return {"token_budget": self._ready().token_budget}

    def prepare(self, rows: list[dict[str, Any]]) -> list[TokenizedPair]:
        return self._ready().tokenize([r["prompt"] for r in rows], [r["chosen"] for r in rows],
                                      [r["rejected"] for r in rows])

    def plan(self, prepared: list[Any]) -> list[list[int]]:
        return self._ready().plan(prepared)

    def n_tokens(self, batch: PairBatch) -> int:
        return sum(p.n_tokens for p in batch.prepared)

    def compute(self, batch: PairBatch) -> list[dict[str, Any]]:
        # Out-of-memory back-off may split the batch; the halves come back in order.
        results = [r for _, part in self._ready().iter_scored(batch.prepared, [list(range(len(batch)))])
                   for r in part]
        return [{**asdict(r), "truncated": p.truncated} for r, p in zip(results, batch.prepared, strict=True)]


# ------------------------------------------------------------------------------------------------
# The implicit margin
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogprobConfig:
    """What a log-prob table's numbers depend on; all of it is in the fingerprint."""

    model: str  # a folder, or a Hub id[@revision]
    identity: str  # content hash of the folder's weights and tokenizer files, or the Hub commit
    dtype: str
    mode: str  # tokenisation: clean or reference (core.scoring.tokenization)
    max_length: int
    max_prompt_length: int
    chat_template: str | None = None  # Jinja text replacing the tokenizer's template (--chat-template)


@register
class LogprobScorer(ModelScorer[LogprobConfig]):
    """The implicit margin's scorer: summed response log-probs and token counts under a causal LM, for the
    policy and for the reference (DPO form). Computed by ImplicitScorer."""

    name = "logprob"
    roles = ("policy", "reference")
    table_kind = "logprob"
    config_type = LogprobConfig

    @classmethod
    def configure(cls, spec: ScoringSettings, value: str) -> LogprobScorer:
        return cls(LogprobConfig(**cls.model_fields(spec, value), mode=spec.mode,
                                 chat_template=getattr(spec, "chat_template", None)))

    def fingerprint_inputs(self) -> dict[str, Any]:
        inputs = super().fingerprint_inputs()
        if inputs["chat_template"] is None:
            del inputs["chat_template"]  # the tokenizer's own: fingerprints from before the option stay valid
        if inputs["mode"] == "reference":
            # Reference truncation now cuts each response with its own context, as SimPO's tokenize_row does:
            # tables from before may differ near max_length, so they are not reused. Clean mode is unchanged.
            inputs["truncation"] = "per-response"
        return inputs

    def load_engine(self) -> ImplicitScorer:
        from marginlens.core.scoring.models import load_causal_lm

        model, tokenizer, _ = load_causal_lm(self.config.model, device=self.run.device, dtype=self.config.dtype)
        if self.config.chat_template is not None:
            tokenizer.chat_template = self.config.chat_template
        return ImplicitScorer(model, tokenizer, mode=self.config.mode, **self.engine_options())


# ------------------------------------------------------------------------------------------------
# The explicit margin
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RewardModelConfig:
    model: str  # a folder, or a Hub id[@revision]
    identity: str  # content hash of the folder's weights and tokenizer files, or the Hub commit (+ remote code)
    dtype: str
    max_length: int
    max_prompt_length: int
    trust_remote_code: bool = False  # the user opted in for this model; already part of `identity`


@register
class RewardModelScorer(ModelScorer[RewardModelConfig]):
    """A reward model's r(x, y_w) and r(x, y_l), computed by RewardScorer."""

    name = "reward_model"
    roles = ("reward",)
    table_kind = "reward"
    config_type = RewardModelConfig
    option = ExplicitOption("--reward-model", "REWARD_MODEL", "reward model for the explicit margin",
                            "reward model", "a reward model id or folder")

    @classmethod
    def configure(cls, spec: ScoringSettings, value: str) -> RewardModelScorer:
        return cls(RewardModelConfig(**cls.model_fields(spec, value), trust_remote_code=cls.trusted(spec, value)))

    @classmethod
    def from_fingerprint_inputs(cls, inputs: Mapping[str, Any], trusted: Collection[str] = ()) -> RewardModelScorer:
        scorer = super().from_fingerprint_inputs(inputs, trusted)
        return cls(dataclasses.replace(scorer.config, trust_remote_code=scorer.config.model in trusted))

    def fingerprint_inputs(self) -> dict[str, Any]:
        inputs = super().fingerprint_inputs()
        del inputs["trust_remote_code"]  # in `identity` already
        # A mode of its own: the reward model's template exactly as rendered (trailing newline kept), no EOS
        # appended. ("clean-no-eos" tables dropped the trailing whitespace: a sequence classifier read another token.)
        return {**inputs, "mode": "rendered-exact"}

    def load_engine(self) -> RewardScorer:
        from marginlens.core.scoring.models import load_reward_model

        model, tokenizer, _ = load_reward_model(self.config.model, device=self.run.device, dtype=self.config.dtype,
                                                trust_remote_code=self.config.trust_remote_code)
        return RewardScorer(model, tokenizer, **self.engine_options())


@dataclass(frozen=True)
class ColumnConfig:
    columns: str  # "score_chosen,score_rejected", "A,B", or one list column such as "all_rm_scores"


@register
class ColumnScorer(Scorer[ColumnConfig]):
    """Explicit rewards the dataset carries (`column_rewards`): no model, so computed at submit."""

    name = "columns"
    roles = ("columns",)
    table_kind = "reward"
    config_type = ColumnConfig
    reads = ("source_row", "score_chosen", "score_rejected", "source_json")
    inline = True
    option = ExplicitOption("--scores", "COLUMNS",
                            "explicit margin from columns: 'score_chosen,score_rejected', 'A,B' or 'all_rm_scores'",
                            "score columns", f"'{DEFAULT_COLUMNS}' (default), 'A,B' from the source record, or one "
                            "list column such as 'all_rm_scores'", default=DEFAULT_COLUMNS)

    @classmethod
    def configure(cls, spec: ScoringSettings, value: str) -> ColumnScorer:
        return cls(ColumnConfig(value))

    @property
    def source(self) -> str:
        return f"columns:{self.config.columns}"

    def compute(self, batch: PairBatch) -> list[dict[str, Any]]:
        rewards = column_rewards(batch.rows, self.config.columns, self.run.dataset)
        return [{"chosen_reward": r.chosen_reward, "rejected_reward": r.rejected_reward} for r in rewards]
