"""Which margins a dataset has, which metrics can run on them, and the one plain sentence to show when the
explicit margin is missing. Pages and commands read this instead of letting a metric fail: a dataset
without reward scores (HH-RLHF, for one) still gets the implicit and random metrics, and is told once
how to get an explicit margin.

    sources = margin_sources(load_margins(ws, "hh", policy_fp=...))
    sources.runnable        ("implicit", "random")
    sources.note            "No explicit margin: ..." (None when there is one; when a reward table is
                            joined but gives no pair a margin, it names it: "a rating table exists, 0 of
                            60 ratings valid")

Why M_AP is not offered without one: z of a constant column is 0 (core.selection.metrics.zscore), so
M_AP = z(m_ex) - w z(|m_im|) with a constant m_ex is -w z(|m_im|): the implicit metric's ranking exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from marginlens.core.scoring.llm_rating import is_rating_table
from marginlens.core.scoring.rewards import PAPER_REWARD_MODEL
from marginlens.core.selection.margins import default_margins
from marginlens.core.selection.metrics import MARGIN_COLUMNS, PAPER_METRICS, get_metric, metric_names
from marginlens.core.workspace import Workspace

NO_EXPLICIT = (
    "No explicit margin: this dataset carries no reward scores and no reward table has been scored, so M_AP "
    "and the explicit metric cannot run; the implicit and random metrics can (M_AP with a constant explicit "
    "margin would rank exactly like the implicit metric). To get one: `marginlens score {dataset} --llm-rating MODEL` "
    "has any OpenAI-compatible model rate each response, or `--reward-model MODEL` scores with a reward model on "
    "a GPU (the paper used {paper_model})."
)
# A reward table exists but no pair has a finite margin from it (an LLM rater that answered off the rubric).
EMPTY_TABLE = (
    "No explicit margin: a {what} table exists ({table}), {valid:,} of {total:,} {unit} valid, and no pair has "
    "both, so M_AP and the explicit metric cannot run; the implicit and random metrics can. To get one: rate "
    "with another model or endpoint, `marginlens score {dataset} --llm-rating OTHER_MODEL` (a new table: this "
    "rater's stored answers are never asked again), or score with `--reward-model MODEL` on a GPU (the paper "
    "used {paper_model})."
)
NO_IMPLICIT = (
    "No implicit margin yet: `marginlens score {dataset}` computes it under the policy (SmolLM2-135M-Instruct by "
    "default, fine on a CPU); until then only the metrics that need no policy can run."
)


@dataclass(frozen=True)
class MarginSources:
    """What a margin frame offers."""

    explicit: bool  # some pair has an explicit margin (dataset scores or a reward table)
    implicit: bool  # some pair has an implicit margin (a policy table)
    runnable: tuple[str, ...]  # registered metrics whose margins are all there, in registry order
    dataset: str = "NAME"  # for the commands the notes suggest
    table: str | None = None  # the reward table joined, if any (fingerprint)
    table_values: tuple[int, int] | None = None  # (finite, all) ratings or rewards of its pairs

    def _explicit_note(self) -> str:
        if self.table and self.table_values is not None:
            rating = is_rating_table(self.table)
            return EMPTY_TABLE.format(what="rating" if rating else "reward", table=self.table,
                                      valid=self.table_values[0], total=self.table_values[1],
                                      unit="ratings" if rating else "rewards", dataset=self.dataset,
                                      paper_model=PAPER_REWARD_MODEL)
        return NO_EXPLICIT.format(dataset=self.dataset, paper_model=PAPER_REWARD_MODEL)

    @property
    def paper_runnable(self) -> tuple[str, ...]:
        """The paper's metrics among the runnable ones: the audit's default subsets."""
        return tuple(name for name in self.runnable if name in PAPER_METRICS)

    @property
    def note(self) -> str | None:
        """The one sentence to show when the explicit margin is missing (None otherwise)."""
        return None if self.explicit else self._explicit_note()

    @property
    def notes(self) -> list[str]:
        """Every missing-margin sentence, explicit first."""
        implicit = NO_IMPLICIT.format(dataset=self.dataset)
        return [text for text, missing in ((self.note, not self.explicit), (implicit, not self.implicit)) if missing]


def _has(frame: pd.DataFrame, column: str) -> bool:
    return column in frame and bool(np.isfinite(frame[column].to_numpy(dtype=np.float64)).any())


def margin_sources(frame: pd.DataFrame) -> MarginSources:
    """What `frame` (core.selection.margins.load_margins) offers. A metric runs when every column it needs
    has a value somewhere (a column of NaN, such as m_im_dpo on a SimPO-form frame, is not there)."""
    runnable = tuple(name for name in metric_names() if all(_has(frame, column) for column in get_metric(name).needs))
    table = frame.attrs.get("reward_fp")
    values = None
    if table and "chosen_reward" in frame:  # how many of the table's values are there, to say so
        pairs = int((frame.attrs.get("coverage") or {}).get("reward", len(frame)))
        finite = sum(int(np.isfinite(frame[c].to_numpy(dtype=np.float64)).sum()) for c in ("chosen_reward", "rejected_reward"))
        values = (finite, 2 * pairs)
    return MarginSources(_has(frame, "m_ex"), _has(frame, "m_im"), runnable, frame.attrs.get("dataset", "NAME"),
                         table, values)


def missing_note(frame: pd.DataFrame, metric: str) -> str | None:
    """What `metric` lacks on `frame` beyond the notes (e.g. the DPO form of m_im), and how to get it."""
    dataset = frame.attrs.get("dataset", "NAME")
    hints = [f"{metric!r} needs the {MARGIN_COLUMNS[c][0]} margin ({c}): {MARGIN_COLUMNS[c][1].replace('NAME', dataset)}."
             for c in get_metric(metric).needs if c not in ("m_ex", "m_im") and c in MARGIN_COLUMNS and not _has(frame, c)]
    return " ".join(hints) or None


def dataset_margin_sources(ws: Workspace, dataset: str) -> MarginSources:
    """margin_sources of the frame pages and commands use by default (the newest tables)."""
    return margin_sources(default_margins(ws, dataset))
