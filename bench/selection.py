"""Benchmark: metric scoring + top-40% selection + overlap table on 1,000,000 synthetic pairs.

    .venv/bin/python bench/selection.py [--n 1000000] [--ratio 0.4] [--correlations]

Prints seconds per step; the target is under 1 s for metric + selection (per metric).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marginlens.core.selection.compare import overlap_table, rank_correlations  # noqa: E402
from marginlens.core.selection.metrics import get_metric, metric_names  # noqa: E402
from marginlens.core.selection.quadrants import quadrant_labels  # noqa: E402
from marginlens.core.selection.select import SelectionSpec, k_for, select, top_k_eligible  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--ratio", type=float, default=0.4)
    parser.add_argument("--correlations", action="store_true", help="also time Spearman/Kendall (slower)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    m_ex = rng.normal(1.0, 2.0, args.n)
    m_im = rng.normal(0.0, 1.5, args.n)
    # what the published rules read besides the margins (core.selection.published_rules)
    columns = {"m_ex": m_ex, "m_im": m_im, "m_im_dpo": m_im, "r_rejected": rng.normal(3.0, 2.0, args.n),
               "rejected_chars": rng.integers(10, 4000, args.n).astype(np.float64)}
    k = k_for(args.n, args.ratio)
    print(f"{args.n:,} pairs, top {k:,} ({args.ratio:.0%})")
    selected, scores, worst = {}, {}, 0.0
    for metric in metric_names():
        t0 = time.perf_counter()
        result = get_metric(metric).score({c: columns[c] for c in get_metric(metric).needs}, n=args.n)
        t1 = time.perf_counter()
        selected[metric] = top_k_eligible(result, k)[0]
        t2 = time.perf_counter()
        scores[metric] = result.scores
        worst = max(worst, t2 - t0)
        print(f"  {metric:<9} metric {t1 - t0:6.3f} s   top-k {t2 - t1:6.3f} s   total {t2 - t0:6.3f} s")
    frame = pd.DataFrame({"pair_id": np.arange(args.n).astype(str), "m_ex": m_ex, "m_im": m_im})
    t0 = time.perf_counter()
    sel = select(frame, SelectionSpec(metric="map", ratio=args.ratio))
    print(f"  select() on a margin frame (map)      {time.perf_counter() - t0:6.3f} s  ({len(sel.positions):,} pairs)")
    t0 = time.perf_counter()
    rows = overlap_table(selected)
    print(f"  overlap table ({len(rows)} metric pairs)      {time.perf_counter() - t0:6.3f} s")
    t0 = time.perf_counter()
    quadrant_labels(m_ex, m_im)
    print(f"  quadrants                             {time.perf_counter() - t0:6.3f} s")
    if args.correlations:
        t0 = time.perf_counter()
        rank_correlations(scores)
        print(f"  rank correlations                     {time.perf_counter() - t0:6.3f} s")
    print(f"slowest metric + selection: {worst:.3f} s (target < 1 s): {'OK' if worst < 1 else 'SLOW'}")
    return 0 if worst < 1 else 1


if __name__ == "__main__":
    sys.exit(main())
