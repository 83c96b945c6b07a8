"""The start page's checklist: what M_AP is, then each step of the loop for the picked dataset, an open step
with a button to the page (and setting) that does it. Which steps are done is core.workspace_progress's;
this module says it in the dashboard's words and draws it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import streamlit as st
from marginlens.app import margin_hints, navigation
from marginlens.app.score_form import DATASET_SOURCE, RATING_SOURCE
from marginlens.app.state import select_dataset
from marginlens.app.widgets import show_error
from marginlens.core.demo.build import DEMO_NAME, ensure_demo
from marginlens.core.errors import MarginLensError
from marginlens.core.selection.select import DEFAULT_RATIO
from marginlens.core.workspace import Workspace
from marginlens.core.workspace_progress import DatasetProgress, Step, dataset_progress

M_AP = ("**M_AP** picks the preference pairs worth training on: `M_AP = z(m_ex) − w·z(|m_im|)`.  \n"
        "It ranks first the pairs whose label is clear (a large **explicit margin** m_ex: a reward model's, an LLM "
        "rater's or the dataset's own score gap) but which the policy has not learned yet (a small **implicit "
        "margin** |m_im|: how much the policy itself already prefers the chosen answer).")
TITLES = {"import": "Imported", "explicit": "Explicit margin (m_ex)", "implicit": "Implicit margin (m_im)",
          "audit": "Audit with an LLM judge (optional)", "export": "Export a subset"}
ICONS = {"done": ":green[:material/check_circle:]", "partial": ":orange[:material/timelapse:]",
         "running": ":blue[:material/pending:]", "todo": ":gray[:material/radio_button_unchecked:]"}
STATE_WORDS = {"done": "done", "partial": "part of the dataset", "running": "running", "todo": "to do"}
# where a finished step's result is seen, for every user (viewers included, when the page is theirs)
VIEW = {"import": ("data", "See it on Data"), "explicit": ("explore", "See the margins on Explore"),
        "implicit": ("explore", "See the margins on Explore"), "audit": ("audit", "See it on Audit"),
        "export": ("export", "See it on Export")}


@dataclass(frozen=True)
class Action:
    """A button: its words, the page it opens and the settings that page takes on arrival."""

    label: str
    page: str
    help: str
    settings: dict[str, Any] = field(default_factory=dict)


def _rating_sample() -> Action:
    n = margin_hints.FIRST_SAMPLE
    return Action(f"Rate {n} pairs with an LLM", "score",
                  f"opens the Score page on the source 'LLM rating' with a sample of {n} pairs: pick the rater's "
                  "endpoint, type its model name and start; the policy's implicit margin is scored on the same "
                  "pairs", {"source": RATING_SOURCE, "sample": n})


def action_for(step: Step, progress: DatasetProgress) -> Action | None:
    """The button of an open step (None: nothing to do from here)."""
    if step.state == "running":
        page = "audit" if step.key == "audit" else "score"
        return Action("Follow the job", page, f"its progress is on the {navigation.PAGES[page][0]} page")
    if step.state == "done" or step.key == "import":
        return None
    explicit = progress.step("explicit")
    if step.key == "explicit":
        if step.state == "todo" and not progress.own_scores:
            return _rating_sample()
        if step.state == "partial" and not progress.own_scores:
            source = RATING_SOURCE if step.source == "rating" else "reward_model"
            return Action("Score more pairs", "score", "opens the Score page on the same source: a larger sample "
                          "keeps the pairs already scored", {"source": source})
        return None  # the dataset's own scores leave some pairs without one: nothing here adds them
    if step.key == "implicit":
        if explicit.state == "todo" and not progress.own_scores:
            n = margin_hints.FIRST_SAMPLE  # the implicit-only route: no endpoint needed, the same pairs later
            return Action(f"Score the policy on {n} pairs", "score", "opens the Score page with the implicit "
                          f"margin only on a sample of {n} pairs (SmolLM2-135M-Instruct by default, fine on a "
                          "CPU); an LLM rating of the same sample adds the explicit margin",
                          {"source": DATASET_SOURCE, "sample": n})
        if step.state == "partial":
            return Action("Score more pairs", "score", "opens the Score page with the implicit margin only: a "
                          "larger sample keeps the pairs already scored", {"source": DATASET_SOURCE})
        sample, seed = explicit.sample if explicit.state == "partial" and explicit.sample else (0, None)
        if sample and seed is None:  # another seed's sample, which the table does not record
            return Action(f"Score {sample:,} pairs", "score", "opens the Score page with the implicit margin only, "
                          f"a sample of {sample:,}: set the seed the explicit margin's sample was drawn with",
                          {"source": DATASET_SOURCE, "sample": sample})
        return Action(f"Score {f'the same {sample:,}' if sample else 'all'} pairs", "score",
                      "opens the Score page with the implicit margin only (SmolLM2-135M-Instruct by default, fine "
                      "on a CPU)" + (": the same seeded sample as the explicit margin" if sample else ""),
                      {"source": DATASET_SOURCE, "sample": sample, "seed": seed or 0})
    if step.key == "audit":
        return Action("Audit a subset", "audit", "opens the Audit page: an LLM judge checks the labels of the "
                      "pairs each metric selects")
    return Action("Write an export", "export", "opens the Export page: it writes the selection built on Explore "
                  f"(M_AP, the top {DEFAULT_RATIO:.0%} by default) for training")


def demo_button(ws: Workspace, key: str, container: Any = None) -> None:
    """"Add the demo dataset" (257 pairs and their policy table, installed in under a second); the pages
    move to it once it is there."""
    box = container or st
    if box.button("Add the demo dataset", key=key, width="stretch",
                  help="the built-in demo: 257 pairs with the dataset's own scores and a policy table"):
        try:
            with st.spinner("Adding the demo ..."):
                ensure_demo(ws)
        except MarginLensError as exc:
            show_error(exc)
        else:
            select_dataset(DEMO_NAME)
            st.rerun()


def progress_for(ws: Workspace, dataset: str) -> DatasetProgress | None:
    frame = margin_hints.default_frame(ws, dataset)
    return None if frame is None else dataset_progress(ws, dataset, frame)


def _step(step: Step, progress: DatasetProgress, may_write: bool, visible: tuple[str, ...], first: bool) -> None:
    with st.container(border=True):
        left, right = st.columns([5, 2], vertical_alignment="center")
        left.markdown(f"{ICONS[step.state]} **{TITLES[step.key]}** · {STATE_WORDS[step.state]}  \n{step.detail}")
        action = action_for(step, progress)
        if action is not None and may_write and action.page in visible:
            if right.button(action.label, key=f"_start_{step.key}", help=action.help,
                            type="primary" if first else "secondary", width="stretch"):
                navigation.go(action.page, progress.dataset, **action.settings)
        elif step.state != "todo" and VIEW[step.key][0] in visible:
            page, label = VIEW[step.key]
            right.page_link(navigation.page(page), label=label, width="stretch")


def checklist(progress: DatasetProgress, may_write: bool, visible: tuple[str, ...]) -> None:
    """The steps, each with its button (operators) or a link to where its result is (everyone)."""
    # one primary button: the first open step is the one to do next
    # (a partial margin already works; the optional audit comes after the export is in reach)
    todo = [s.key for s in progress.steps if s.state == "todo"]
    first = next((k for k in todo if k != "audit"), todo[0] if todo else None)
    for step in progress.steps:
        _step(step, progress, may_write, visible, step.key == first)
    if not may_write:
        st.caption("You are signed in as a viewer: you see what exists; scoring, audits and exports are started "
                   "by the operator.")


def rating_note(progress: DatasetProgress, may_write: bool = True) -> str | None:
    """The first-hour route for a dataset without scores of its own, said once above the steps."""
    if progress.own_scores or progress.step("explicit").state != "todo":
        return None
    return (f"{progress.dataset} carries no reward scores, so its explicit margin has to be made: the quickest "
            f"way is to have an LLM rate a small sample ({margin_hints.FIRST_SAMPLE} pairs) on the Score page, "
            "which scores the policy's implicit margin on the same pairs; then Explore shows both."
            + ("" if may_write else " The operator starts it."))
