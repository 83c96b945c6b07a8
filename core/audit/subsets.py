"""The audited subsets: each metric's top-k (core.selection, through the metric registry) and seeded samples
of them, kept in the paper's order (the registry's: map, explicit, implicit, random, then any other).

The samples are pair ids; `sampled_rows` reads their texts back and fails loudly when one is gone (a
re-import changed the pairs), because judging a different pair under the same id would corrupt the verdicts.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import pandas as pd
from marginlens.core.errors import MarginLensError
from marginlens.core.selection.margin_sources import margin_sources
from marginlens.core.selection.margins import default_margins, pair_texts
from marginlens.core.selection.metrics import DEFAULT_PARAMS, MetricParams, metric_names
from marginlens.core.selection.select import SelectionSpec, select
from marginlens.core.workspace import Workspace

DEFAULT_N = 50  # pairs sampled per subset
DEFAULT_SAMPLE_SEED = 42

V = TypeVar("V")


def build_subsets(
    ws: Workspace,
    dataset: str,
    metrics: Sequence[str] | None = None,
    ratio: float | None = None,
    params: MetricParams = DEFAULT_PARAMS,
    policy_fp: str | None = None,
    reward_fp: str | None = None,
) -> dict[str, list[str]]:
    """The top-k pair ids of each metric (default: the paper's metrics the margins allow), score tables
    defaulting as in the explorer.

    Metrics whose margins the dataset lacks raise MarginLensError naming what to score first.
    """
    return subsets_of(default_margins(ws, dataset, policy_fp, reward_fp), metrics, ratio, params)


def subsets_of(margins: pd.DataFrame, metrics: Sequence[str] | None = None, ratio: float | None = None,
               params: MetricParams = DEFAULT_PARAMS) -> dict[str, list[str]]:
    """build_subsets of a margin frame already read (core.selection.margins.default_margins); by default the
    paper's metrics the frame can run (core.selection.margin_sources)."""
    subsets = {}
    for metric in margin_sources(margins).paper_runnable if metrics is None else metrics:
        spec = SelectionSpec(metric=metric, ratio=ratio, weight=params.weight, signed=params.signed, seed=params.seed,
                             threshold=params.threshold)
        subsets[metric] = select(margins, spec).pair_ids
    return subsets


def sample_subsets(subsets: Mapping[str, Sequence[str]], n: int,
                   seed: int = DEFAULT_SAMPLE_SEED) -> dict[str, list[str]]:
    """n pair ids drawn without replacement from each subset (all of it when smaller), seeded per name
    so that adding a subset does not change the others' samples."""
    if n < 1:
        raise MarginLensError(f"the audit sample size must be at least 1, got {n}")
    samples = {}
    for name, ids in subsets.items():
        ids = list(dict.fromkeys(ids))
        rng = random.Random(f"{seed}:{name}")
        samples[name] = ids if len(ids) <= n else rng.sample(ids, n)
    return samples


def ordered(samples: Mapping[str, V]) -> dict[str, V]:
    """Subsets in the paper's order (the metric registry's, then any others by name): job specs and
    results are stored as JSON with sorted keys, so the order they were given in is lost."""
    rank = {name: i for i, name in enumerate(metric_names())}
    return {name: samples[name] for name in sorted(samples, key=lambda n: (rank.get(n, len(rank)), n))}


def unique_pairs(samples: Mapping[str, Sequence[str]]) -> list[str]:
    """Every sampled pair once, in first-seen order (a pair in several subsets is judged once)."""
    return list(dict.fromkeys(pid for ids in samples.values() for pid in ids))


def sampled_rows(ws: Workspace, dataset: str, pair_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The pair-table rows of sampled ids, by id; every id must still be in the dataset."""
    rows = {row["pair_id"]: row for row in pair_texts(ws, dataset, pair_ids)}
    missing = [pid for pid in pair_ids if pid not in rows]
    if missing:
        raise MarginLensError(
            f"dataset {dataset!r} has no pair {missing[0]!r} ({len(missing)} sampled pair ids missing; "
            "was the dataset re-imported? sample again)"
        )
    return rows
