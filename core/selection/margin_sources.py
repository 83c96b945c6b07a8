"""Which margins a dataset has, which metrics can run on them, and the one plain sentence to show when the
explicit margin is missing. Pages and commands read this instead of letting a metric fail: a dataset
without reward scores (HH-RLHF, for one) still gets every metric that reads no explicit margin (implicit,
random, selective_dpo: `without_explicit` reads them off the registry), and is told once how to get one.

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
from marginlens.core.data.pair_sample import DEFAULT_SEED, sample_positions
from marginlens.core.scoring.llm_rating import is_rating_table
from marginlens.core.scoring.rewards import PAPER_REWARD_MODEL
from marginlens.core.selection.margins import default_margins
from marginlens.core.selection.metrics import MARGIN_COLUMNS, PAPER_METRICS, get_metric, metric_names
from marginlens.core.workspace import Workspace

NO_EXPLICIT = (
    "No explicit margin: this dataset carries no reward scores and no reward table has been scored, so M_AP "
    "and the explicit metric cannot run; {runnable} can (M_AP with a constant explicit "
    "margin would rank exactly like the implicit metric). To get one: `marginlens score {dataset} --llm-rating MODEL"
    "{fill} --rating-url URL` has any OpenAI-compatible model rate each response{which} (URL: a server of yours, "
    "such as `transformers serve MODEL` at http://127.0.0.1:8000/v1; without --rating-url it asks api.openai.com "
    "with $OPENAI_API_KEY), or `--reward-model MODEL` in place of --llm-rating scores with a reward model on a GPU "
    "(the paper used {paper_model})."
)
# A reward table exists but no pair has a finite margin from it (an LLM rater that answered off the rubric).
EMPTY_TABLE = (
    "No explicit margin: a {what} table exists ({table}), {valid:,} of {total:,} {unit} valid, and no pair has "
    "both, so M_AP and the explicit metric cannot run; {runnable} can. To get one: rate "
    "with another model or endpoint, `marginlens score {dataset} --llm-rating OTHER_MODEL` (a new table: this "
    "rater's stored answers are never asked again), or score with `--reward-model MODEL` on a GPU (the paper "
    "used {paper_model})."
)
NO_IMPLICIT = (
    "No implicit margin yet: `marginlens score {dataset}{fill}` computes it under the policy{which} "
    "(SmolLM2-135M-Instruct by default, fine on a CPU); until then only the metrics that need no policy can run."
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
    # the seeded sample each margin covers, (n, seed; seed None when not the default one); None when
    # it covers every pair or none: a fill command must score the same pairs, not the whole dataset
    explicit_sample: tuple[int, int | None] | None = None
    implicit_sample: tuple[int, int | None] | None = None

    def _explicit_note(self) -> str:
        if self.table and self.table_values is not None:
            rating = is_rating_table(self.table)
            return EMPTY_TABLE.format(what="rating" if rating else "reward", table=self.table,
                                      valid=self.table_values[0], total=self.table_values[1],
                                      unit="ratings" if rating else "rewards", dataset=self.dataset,
                                      paper_model=PAPER_REWARD_MODEL, runnable=without_explicit_words())
        fill, which = _fill(self.implicit_sample, "implicit") if self.implicit else ("", "")
        return NO_EXPLICIT.format(dataset=self.dataset, paper_model=PAPER_REWARD_MODEL, runnable=without_explicit_words(),
                                  fill=(" --policy none" if self.implicit else "") + fill, which=which)

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
        fill, which = _fill(self.explicit_sample, "explicit") if self.explicit else ("", "")
        implicit = NO_IMPLICIT.format(dataset=self.dataset, fill=fill, which=which)
        return [text for text, missing in ((self.note, not self.explicit), (implicit, not self.implicit)) if missing]


def without_explicit() -> tuple[str, ...]:
    """The registered metrics that run without an explicit margin: each declares the margins it needs
    (Metric.needs), and these need the implicit one (m_im) or none. Read at call time, so a rule registered
    later is named too."""
    return tuple(name for name in metric_names() if set(get_metric(name).needs) <= {"m_im"})


def without_explicit_words(noun: str = "metric") -> str:
    """`without_explicit` in a sentence: "the implicit, random and selective_dpo metrics" (`noun`: "subset" for
    the audit's)."""
    names = without_explicit()
    if len(names) == 1:
        return f"the {names[0]} {noun}"
    return f"the {', '.join(names[:-1])} and {names[-1]} {noun}s"


def _fill(sample: tuple[int, int | None] | None, margin: str) -> tuple[str, str]:
    """The `--sample N --seed S` of a fill command and the words that say why."""
    if sample is None:
        return "", ""
    n, seed = sample
    if seed is None:
        return (f" --sample {n:d} --seed SEED",
                f" on the {n:,} pairs the {margin} margin has (SEED: the --seed they were sampled with)")
    return f" --sample {n:d} --seed {seed:d}", f" on the {n:,} pairs the {margin} margin has"


def covered_sample(frame: pd.DataFrame, column: str) -> tuple[int, int | None] | None:
    """Which `--sample N --seed S` (core.data.pair_sample) holds every pair with a value in `column`: None
    when the column has a value on every pair or on none. N is the score table's row count (a rating kept
    invalid still took its place in the sample); S is None when the default seed's sample does not hold them
    (another seed's: the table does not record which)."""
    values = frame[column].to_numpy(dtype=np.float64, na_value=np.nan) if column in frame else np.empty(0)
    have = np.flatnonzero(np.isfinite(values))
    if have.size in (0, len(frame)):
        return None
    role = "policy" if column == "m_im" else "reward"
    n = max(int((frame.attrs.get("coverage") or {}).get(role, have.size)), int(have.size))
    if n >= len(frame):
        return None
    if np.isin(have, sample_positions(frame["pair_id"].tolist(), n, DEFAULT_SEED)).all():
        return n, DEFAULT_SEED
    return n, None


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
    explicit, implicit = _has(frame, "m_ex"), _has(frame, "m_im")
    # only where a note will name a fill command: hashing every pair id is a second at a million pairs
    return MarginSources(explicit, implicit, runnable, frame.attrs.get("dataset", "NAME"), table, values,
                         covered_sample(frame, "m_ex") if explicit and not implicit else None,
                         covered_sample(frame, "m_im") if implicit and not explicit else None)


def missing_note(frame: pd.DataFrame, metric: str) -> str | None:
    """What `metric` lacks on `frame` beyond the notes (e.g. the DPO form of m_im), and how to get it."""
    dataset = frame.attrs.get("dataset", "NAME")
    hints = [f"{metric!r} needs the {MARGIN_COLUMNS[c][0]} margin ({c}): {MARGIN_COLUMNS[c][1].replace('NAME', dataset)}."
             for c in get_metric(metric).needs if c not in ("m_ex", "m_im") and c in MARGIN_COLUMNS and not _has(frame, c)]
    return " ".join(hints) or None


def dataset_margin_sources(ws: Workspace, dataset: str) -> MarginSources:
    """margin_sources of the frame pages and commands use by default (the newest tables)."""
    return margin_sources(default_margins(ws, dataset))
