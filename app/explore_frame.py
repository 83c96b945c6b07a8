"""What Explore derives from one margin frame and reuses on every rerun, without Streamlit.

The margin frame is cached per (dataset, score tables) and shared by every session (app/readers), so
its numpy columns, which margins exist, the quadrants for each split axis and the drawn sample are
computed once per frame and kept beside it here: at 1M pairs each of them costs tens to hundreds of
milliseconds, which a control change must not pay again.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from marginlens.core.selection.margin_sources import MarginSources, margin_sources
from marginlens.core.selection.quadrants import Quadrants, quadrant_labels


@dataclass
class FrameColumns:
    """Float margins of a frame and what follows from them alone (no control changes these)."""

    m_ex: np.ndarray
    m_im: np.ndarray
    both: np.ndarray  # bool: the pair has both margins (can be drawn on the scatter)
    sources: MarginSources  # which margins the frame has: core's one rule, as the notes and metrics use it
    _memo: dict = field(default_factory=dict, repr=False)
    _recent: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @classmethod
    def of(cls, margins: pd.DataFrame) -> FrameColumns:
        m_ex = margins["m_ex"].to_numpy(np.float64, na_value=np.nan)
        m_im = margins["m_im"].to_numpy(np.float64, na_value=np.nan)
        return cls(m_ex, m_im, np.isfinite(m_ex) & np.isfinite(m_im), margin_sources(margins))

    @property
    def has_explicit(self) -> bool:
        return self.sources.explicit

    @property
    def has_implicit(self) -> bool:
        return self.sources.implicit

    def memo(self, key: tuple, compute):
        """`compute()` once per key for this frame (sessions share the frame, hence the lock)."""
        with self._lock:
            if key not in self._memo:
                self._memo[key] = compute()
            return self._memo[key]

    def recent(self, key: tuple, compute, keep: int = 4):
        """Like memo, but only the `keep` most recently used keys stay (for large results, e.g. views)."""
        with self._lock:
            if key in self._recent:
                self._recent.move_to_end(key)
                return self._recent[key]
        value = compute()  # outside the lock: sessions with other controls need not wait
        with self._lock:
            self._recent[key] = value
            while len(self._recent) > keep:
                self._recent.popitem(last=False)
        return value

    def quadrants(self, im_axis: str) -> Quadrants | None:
        """Quadrants at the medians (None without a pair having both margins)."""
        if not self.both.any():
            return None
        return self.memo(("quadrants", im_axis), lambda: quadrant_labels(self.m_ex, self.m_im, im_axis=im_axis))


_FRAMES: dict[int, FrameColumns] = {}


def frame_columns(margins: pd.DataFrame) -> FrameColumns:
    """The FrameColumns of this frame object, computed on first use and dropped with the frame."""
    key = id(margins)
    found = _FRAMES.get(key)
    if found is None:
        found = FrameColumns.of(margins)
        _FRAMES[key] = found
        weakref.finalize(margins, _FRAMES.pop, key, None)
    return found
