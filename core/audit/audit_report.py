"""What an audit costs before it runs, what it found at any time (partial too), and acting on it: flagging
the pairs the judge decisively reverses (core.data.flags).

All of it reads the verdict store (core.verdicts), never a running job, so the dashboard and the CLI
show the same numbers while an audit is still judging. The report is a plain JSON-able dict because it is
stored as such in the job's result and printed by `marginlens audit --json`; the statistics in it are
defined in core.audit.agreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from marginlens.core.audit.agreement import subset_stats
from marginlens.core.audit.audit_params import AuditParams
from marginlens.core.audit.judge_prompt import PROMPT_VERSION, build_messages
from marginlens.core.audit.subsets import ordered, sampled_rows
from marginlens.core.chat_client import estimate_tokens
from marginlens.core.data.flags import flag_pairs, load_flags
from marginlens.core.verdicts import PairVerdict, VerdictStore, pair_verdicts
from marginlens.core.workspace import Workspace


@dataclass(frozen=True)
class CostEstimate:
    """What an audit will still cost. Retries are not included: they are bounded by max_calls."""

    pairs: int
    calls_total: int  # two judgments (orders) per pair
    calls_stored: int  # already in the verdict store: not paid again
    calls: int  # still to make
    input_tokens: int  # estimated at ~4 characters a token
    output_tokens: int  # worst case: max_output_tokens per call
    max_calls: int | None
    max_tokens: int | None
    usd: float | None  # only when prices are given
    fits_budget: bool

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def estimate_cost(
    ws: Workspace,
    params: AuditParams,
    usd_per_million_input: float | None = None,
    usd_per_million_output: float | None = None,
) -> CostEstimate:
    """Calls not yet in the verdict store and their worst-case tokens, in USD when prices are given."""
    pending = params.pending(VerdictStore.for_dataset(ws, params.dataset))
    rows = sampled_rows(ws, params.dataset, list(dict.fromkeys(pid for pid, _ in pending)))
    input_tokens = sum(
        estimate_tokens(build_messages(rows[pid]["prompt"], rows[pid]["chosen"], rows[pid]["rejected"], order))
        for pid, order in pending
    )
    output_tokens = len(pending) * params.endpoint.max_output_tokens
    usd = None
    if usd_per_million_input is not None and usd_per_million_output is not None:
        usd = (input_tokens * usd_per_million_input + output_tokens * usd_per_million_output) / 1e6
    n_pairs = len(params.pair_ids)
    fits = (params.max_calls is None or len(pending) <= params.max_calls) and (
        params.max_tokens is None or input_tokens + output_tokens <= params.max_tokens
    )
    return CostEstimate(n_pairs, 2 * n_pairs, 2 * n_pairs - len(pending), len(pending), input_tokens, output_tokens,
                        params.max_calls, params.max_tokens, usd, fits)


def load_pair_verdicts(ws: Workspace, dataset: str, judge_model: str,
                       prompt_version: str = PROMPT_VERSION) -> dict[str, PairVerdict]:
    return pair_verdicts(VerdictStore.for_dataset(ws, dataset).records(), judge_model, prompt_version)


def verdicts_for_pair(ws: Workspace, dataset: str, pair_id: str) -> list[dict[str, Any]]:
    """Every stored answer about one pair (all judges, prompt versions and orders), for the pair viewer."""
    records = [r for r in VerdictStore.for_dataset(ws, dataset).records() if r["pair_id"] == pair_id]
    return sorted(records, key=lambda r: (r["judge_model"], r["prompt_version"], r["order"]))


def audit_report(ws: Workspace, params: AuditParams) -> dict[str, Any]:
    """Statistics per subset (and over all sampled pairs) from whatever the store holds now."""
    verdicts = load_pair_verdicts(ws, params.dataset, params.judge_model, params.prompt_version)
    subsets = {name: subset_stats(list(ids), verdicts) for name, ids in ordered(params.samples).items()}
    return {
        "dataset": params.dataset,
        "judge_model": params.judge_model,
        "prompt_version": params.prompt_version,
        "subsets": subsets,
        "overall": subset_stats(params.pair_ids, verdicts),
    }


def no_decisive_note(overall: dict[str, Any], live: bool = False) -> str | None:
    """Why agreement cannot be measured (no decisive pair among the judged ones), in words that name no
    command; None when some pair is decisive or none is judged yet. `overall`: an audit report's "overall"."""
    if overall["decisive"] or not (overall["judged"] or overall["invalid"]):
        return None
    yet = " yet" if live or overall["pending"] else ""
    if overall["valid_pairs"]:
        return (f"No decisive pair{yet}, so the judge's agreement with the labels cannot be measured: in each of the "
                f"{overall['valid_pairs']:,} pairs answered in both orders, the judge named the response in the same "
                "position (A, or B) both times rather than the same response: it answered by position, not by "
                "content (position consistency 0%)"
                + (f"; {overall['invalid']:,} more answers were off-format" if overall["invalid"] else "")
                + ". A stronger judge model usually fixes this; the verdicts show its answers.")
    return (f"No decisive pair{yet}, so the judge's agreement with the labels cannot be measured: no pair has a "
            f"valid answer in both orders ({overall['invalid']:,} answers were off-format, not A or B). Re-ask the "
            "off-format answers, or use a judge model that follows the answer format.")


def verdict_rows(ws: Workspace, params: AuditParams) -> list[dict[str, Any]]:
    """One row per sampled pair: its subsets, both answers and rationales, agreement, and its flag."""
    verdicts = load_pair_verdicts(ws, params.dataset, params.judge_model, params.prompt_version)
    flags = load_flags(ws, params.dataset)
    membership: dict[str, list[str]] = {}
    for name, ids in ordered(params.samples).items():
        for pid in ids:
            membership.setdefault(pid, []).append(name)
    rows = []
    for pid, names in membership.items():
        verdict = verdicts.get(pid) or PairVerdict(pid, None, None)
        flag = flags.get(pid)
        rows.append({**verdict.to_row(), "subsets": names, "flag_action": flag["action"] if flag else None})
    return rows


def disagreements(ws: Workspace, dataset: str, judge_model: str, prompt_version: str = PROMPT_VERSION,
                  pair_ids: list[str] | None = None) -> list[str]:
    """Pairs whose judge verdict is decisive (both orders agree) and prefers the rejected response."""
    verdicts = load_pair_verdicts(ws, dataset, judge_model, prompt_version)
    wanted = verdicts if pair_ids is None else {p: verdicts[p] for p in pair_ids if p in verdicts}
    return [pid for pid, v in wanted.items() if v.agrees is False]


def flag_disagreements(ws: Workspace, dataset: str, judge_model: str, action: str = "exclude",
                       prompt_version: str = PROMPT_VERSION, pair_ids: list[str] | None = None) -> list[str]:
    """Flag every pair the judge decisively prefers the other way; returns the pair ids flagged."""
    ids = disagreements(ws, dataset, judge_model, prompt_version, pair_ids)
    if ids:
        flag_pairs(ws, dataset, ids, action=action,
                   reason=f"judge {judge_model} ({prompt_version}) prefers the rejected response in both orders",
                   judge_model=judge_model)
    return ids
