"""The explicit scorer: reward r(x, y) for chosen and rejected, from a reward model or from columns.

Reward model: the conversation (prompt messages + the response as the assistant turn) goes
through the *reward model's own* chat template, exactly as rendered (no extra EOS), and the model's
scalar is the reward: `logits[:, 0]` of a one-label sequence classifier, or the `score` output of
models that define one (e.g. ArmoRM; remote code, only on an explicit per-model opt-in). Batching,
sorting by length, truncation and OOM back-off are the implicit scorer's (core.scoring.logprobs).

Columns (no model): see `column_rewards`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.logprobs import BatchedScorer
from marginlens.core.scoring.tokenization import TokenizedPair

# The canonical columns ingest fills (for all_rm_scores datasets: max and min of the candidates).
DEFAULT_COLUMNS = "score_chosen,score_rejected"

# The paper's reward model: an 8B Llama-3 with its own scoring head (remote code), GPU-sized.
PAPER_REWARD_MODEL = "RLHFlow/ArmoRM-Llama3-8B-v0.1"


def reward_model_command(dataset: str) -> str:
    """The command that scores `dataset` with the paper's reward model on a GPU."""
    return (f"marginlens score {dataset} --policy none --reward-model {PAPER_REWARD_MODEL} "
            f"--trust-remote-code {PAPER_REWARD_MODEL} --device cuda")


def reward_model_note(dataset: str) -> str:
    """What the Score page and docs/METRIC.md say about the real thing."""
    return (f"The paper's explicit margins came from {PAPER_REWARD_MODEL} (8B; it runs its own code, so it needs "
            f"--trust-remote-code). On a GPU: `{reward_model_command(dataset)}`. Any sequence-classification "
            "reward model works the same way (its own chat template, one score per response); without a GPU, "
            "LLM rating asks any OpenAI-compatible model instead.")


@dataclass(frozen=True)
class PairRewards:
    chosen_reward: float
    rejected_reward: float


class RewardScorer(BatchedScorer):
    """Rewards of both responses of each pair under one reward model already on its device."""

    append_eos = False

    def score_batch(self, pairs: Sequence[TokenizedPair]) -> list[PairRewards]:
        import torch

        rows = [p.prompt + c for p in pairs for c in (p.chosen, p.rejected)]
        ids, lengths = self.padded(rows, max(len(r) for r in rows))
        mask = (torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]).long()
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask)
        values = reward_values(out).float().cpu().tolist()
        return [PairRewards(values[2 * i], values[2 * i + 1]) for i in range(len(pairs))]


def reward_values(out: Any) -> Any:
    """The scalar reward per row from a reward model's output."""
    score = getattr(out, "score", None)
    if score is None and isinstance(out, dict):
        score = out.get("score")
    values = score if score is not None else out.logits
    if values.dim() == 2:
        if values.shape[1] != 1:
            raise MarginLensError(f"reward model output has {values.shape[1]} values per sequence; expected one")
        values = values[:, 0]
    return values


def _field(record: dict[str, Any], row: dict[str, Any], name: str, dataset: str, index: int) -> Any:
    if name in ("score_chosen", "score_rejected") and row.get(name) is not None:
        return row[name]
    if name in record:
        return record[name]
    raise MarginLensError(f"dataset {dataset!r}: row {index}, field {name!r}: missing (no such column in the source)")


def _number(value: Any, name: str, dataset: str, index: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MarginLensError(f"dataset {dataset!r}: row {index}, field {name!r}: expected a number, got {value!r}")
    return float(value)


def column_rewards(rows: Sequence[dict[str, Any]], columns: str | None, dataset: str = "dataset"
                   ) -> list[PairRewards]:
    """Explicit rewards from the dataset itself (docs/METRIC.md).

    `columns`:
      "score_chosen,score_rejected" (default)  the canonical columns ingest filled;
      "A,B"                                    two fields of the source record: chosen's and rejected's score;
      "all_rm_scores" (any one list field)     max and min of the candidates' scores (SimPO/ArmoRM sets:
                                               chosen = argmax, rejected = argmin, m_ex = max - min).
    Fields not among the canonical columns are read from each pair's `source_json`.
    """
    names = [c.strip() for c in (columns or DEFAULT_COLUMNS).split(",") if c.strip()]
    if len(names) not in (1, 2):
        raise MarginLensError(f"--scores takes one list column or two columns 'CHOSEN,REJECTED', got {columns!r}")
    out = []
    for i, row in enumerate(rows):
        record = json.loads(row["source_json"]) if row.get("source_json") else {}
        index = row.get("source_row", i)
        if len(names) == 2:
            c = _number(_field(record, row, names[0], dataset, index), names[0], dataset, index)
            r = _number(_field(record, row, names[1], dataset, index), names[1], dataset, index)
        else:
            values = _field(record, row, names[0], dataset, index)
            if not isinstance(values, list) or len(values) < 2:
                raise MarginLensError(
                    f"dataset {dataset!r}: row {index}, field {names[0]!r}: expected a list of at least two scores"
                )
            numbers = [_number(v, names[0], dataset, index) for v in values]
            c, r = max(numbers), min(numbers)
        out.append(PairRewards(c, r))
    return out
