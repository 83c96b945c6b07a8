"""The dashboard's words for a missing margin: which page and which choice gets it, not a CLI command.

core.selection.margin_sources says the same for the command line; a dashboard user reads these.
"""

from __future__ import annotations

from typing import Any

from marginlens.app.explore_state import margins_for
from marginlens.app.explore_view import sources_of
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.llm_rating import is_rating_table
from marginlens.core.scoring.rewards import PAPER_REWARD_MODEL, reward_model_command
from marginlens.core.selection.margin_sources import MarginSources, without_explicit_words
from marginlens.core.selection.margins import DEFAULT_BETA, default_scorers
from marginlens.core.workspace import Workspace

FIRST_SAMPLE = 30  # pairs of a first LLM rating: a few minutes on a small endpoint, enough to see both margins


def explicit_words(sources: MarginSources, here: bool = False) -> str | None:
    """The sentence for a frame without an explicit margin (None when it has one). `here`: said on the Score
    page itself ("below" instead of "on the Score page")."""
    if sources.explicit:
        return None
    where = "Below" if here else "On the Score page"
    how = (f"{where}, the source 'LLM rating' has any OpenAI-compatible model rate each response (no GPU needed; "
           f"pick its endpoint and type its model name, and try a sample of {FIRST_SAMPLE} pairs first); 'reward "
           f"model' scores with a reward model on a GPU (the paper used {PAPER_REWARD_MODEL}).")
    if sources.table and sources.table_values is not None:
        valid, total = sources.table_values
        what = "rating" if is_rating_table(sources.table) else "reward"
        return (f"No usable explicit margin: a {what} table exists ({sources.table}), {valid:,} of {total:,} "
                f"{what}s valid, and no pair has both, so M_AP and the explicit metric cannot run; "
                f"{without_explicit_words()} can. {where}, rate again with another model or endpoint (a new table), or score "
                f"with a reward model on a GPU.")
    return ("No explicit margin yet: this dataset has no reward scores of its own and no rating or reward table, "
            f"so M_AP and the explicit metric cannot run; {without_explicit_words()} can. " + how)


def implicit_words(sources: MarginSources, here: bool = False) -> str | None:
    if sources.implicit:
        return None
    where = "below" if here else "on the Score page"
    return (f"No implicit margin yet: 'Start scoring' {where} with a policy model (SmolLM2-135M-Instruct by "
            "default, fine on a CPU) computes it; until then only the metrics that need no policy can run.")


def missing_words(sources: MarginSources, here: bool = False) -> str | None:
    """Every missing-margin sentence (sources: explore_view.sources_of a margin frame), explicit first."""
    return " ".join(t for t in (explicit_words(sources, here), implicit_words(sources, here)) if t) or None


def cannot_run_words(metrics: list[str], sources: MarginSources) -> str:
    """Why `metrics` cannot run on the frame `sources` describes, and what can: the page's words for core's
    error (which names the commands that score the missing margin)."""
    why = missing_words(sources) or ("They need a column this dataset lacks: a reference model's log-probs (the "
                                     "DPO-form margin) or an audit's verdicts.")
    return (f"{'Metrics' if len(metrics) > 1 else 'Metric'} {', '.join(metrics)} cannot run on this dataset. {why} "
            "What runs now: "
            + (", ".join(sources.runnable) or "nothing yet") + ".")


def reward_model_words(dataset: str) -> str:
    """The Score page's line on reward models: the paper's needs its own code run, which only the command line
    allows (an operator's explicit opt-in there); any other reward model runs from the page."""
    return (f"The paper's explicit margins came from {PAPER_REWARD_MODEL} (8B). It runs its own code, which the "
            "dashboard never allows: an operator scores it from the command line on a GPU, "
            f"`{reward_model_command(dataset)}`. Other sequence-classification reward models run from here (source "
            "'reward model', its Hub id or folder under 'Columns or model'); without a GPU, 'LLM rating' asks any "
            "OpenAI-compatible model instead.")


def default_frame(ws: Workspace, dataset: str) -> Any | None:
    """The cached margin frame of the dataset's newest tables (what pages use by default); None when it cannot
    be read (a missing or damaged table: the pages that pick tables say which)."""
    try:
        return margins_for(ws, dataset, {**default_scorers(ws, dataset), "reference": None, "beta": DEFAULT_BETA})
    except MarginLensError:
        return None


def dataset_sources(ws: Workspace, dataset: str) -> MarginSources | None:
    frame = default_frame(ws, dataset)
    return None if frame is None else sources_of(frame)
