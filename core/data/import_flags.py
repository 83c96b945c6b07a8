"""What the import's row flags mean, and how many kept pairs carry one.

A flag (the pair table's `flags` column, set by core.data.formats) marks something odd about how a row was
read. A flagged pair is kept: it is imported, scored and selectable like any other, and the filter
`flagged=false` leaves such pairs out. (The audit's exclude/swap flags are another thing: core.data.flags.)
Rows with a warning (the manifest's `warnings`: the not_argmax rows, with which candidate it was) are a
subset of the flagged ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.compute as pc
from marginlens.core.data.formats import EMPTY_RESPONSE
from marginlens.core.data.pairs import load_texts
from marginlens.core.workspace import Workspace

FLAG_NOTES: dict[str, str] = {
    EMPTY_RESPONSE: "the chosen or rejected response is empty; kept because an empty answer can be the preferred "
                    "one (HH-RLHF prefers silence to some harmful requests)",
    "multi_turn_response": "chosen or rejected goes on for more turns after the prompt the two share; the whole "
                           "continuation is scored as the response",
    "not_argmax": "chosen or rejected is not the best or worst candidate by the row's own reward scores (the "
                  "warnings below say which candidate)",
}
FLAGS_KEPT = ("A flag marks something odd about how a row was read; flagged pairs are kept and scored like any "
              "other, and the filter flagged=false leaves them out.")


@dataclass(frozen=True)
class FlagCount:
    flag: str
    pairs: int
    meaning: str


def flag_note(flag: str) -> str:
    return FLAG_NOTES.get(flag, "set by the import (no description for this flag)")


def flag_counts(flagged: dict[str, int]) -> list[FlagCount]:
    """The manifest's `flagged` (flag -> kept pairs) with what each flag means, most frequent first."""
    return [FlagCount(flag, int(n), flag_note(flag)) for flag, n in sorted(flagged.items(), key=lambda i: -i[1])]


def flagged_pairs(ws: Workspace, dataset: str) -> int:
    """Kept pairs with at least one flag: a pair may carry two flags, so this can be less than the flags'
    sum. Read from the memory-mapped pair table's `flags` column (milliseconds at a million pairs)."""
    lengths = pc.list_value_length(load_texts(ws, dataset).column("flags"))
    return int(pc.sum(pc.greater(pc.fill_null(lengths, 0), 0)).as_py() or 0)
