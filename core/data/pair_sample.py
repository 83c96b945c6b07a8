"""A seeded, nested sample of a dataset's pairs: the pairs ranked by a hash of (seed, pair_id), first n.

Ranking by a content hash instead of drawing from a random generator makes the sample stable under
reordering and re-imports, and nested: the first 500 of the ranking hold the first 200, so scoring
`--sample 500` after `--sample 200` has only the 300 new pairs to compute.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from marginlens.core.errors import MarginLensError

DEFAULT_SEED = 0


def _rank_keys(pair_ids: Sequence[str], seed: int) -> np.ndarray:
    prefix = f"{seed}:".encode()
    return np.fromiter((int.from_bytes(hashlib.blake2b(prefix + pid.encode(), digest_size=8).digest(), "big")
                        for pid in pair_ids), dtype=np.uint64, count=len(pair_ids))


def sample_positions(pair_ids: Sequence[str], n: int | None, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Positions (ascending, so in dataset order) of the n sampled pairs; every position when n is None
    or at least the number of pairs."""
    total = len(pair_ids)
    if n is not None and n < 1:
        raise MarginLensError(f"the sample size must be at least 1, got {n}")
    if n is None or n >= total:
        return np.arange(total, dtype=np.int64)
    # stable sort: two ids with the same 64-bit key (never seen in practice) are taken in dataset order
    ranked = np.argsort(_rank_keys(pair_ids, seed), kind="stable")
    return np.sort(ranked[:n]).astype(np.int64)
