"""A score job's progress: pairs done across tasks and ranks, tokens/s, and the work left for the ETA.

Pairs are a poor unit for the ETA: each chunk is scored shortest first, so the first batches of a
chunk go several times faster than its last ones, and a pairs/s rate promises the end far too early.
The ETA counts tokens instead (WorkCount): a chunk's tokens are known once it is tokenized, and the
chunks not tokenized yet are estimated at the mean tokens per pair seen so far (chunks are slices of
the dataset in its own order, so the mean of the first is a fair guess for the rest).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from marginlens.core import jobs
from marginlens.core.atomic import read_json, write_json


@dataclass
class WorkCount:
    """Tokens known (tokenized chunks), tokens of those done, and pairs done without being tokenized.

    Worked example (repeated by tests/test_score_eta.py): 1,000 pairs; one chunk of 100 pairs tokenized,
    3,000 tokens; 40 of its pairs done, 600 tokens (the short ones). Mean 30 tokens per pair, so the 900
    pairs not tokenized yet are 27,000 tokens, and 2,400 remain of the chunk: 29,400 tokens left.
    """

    total_pairs: int
    known_pairs: int = 0
    known_tokens: int = 0
    done_tokens: int = 0  # of done pairs whose tokens are known
    untokenized_done: int = 0  # pairs done (skipped as written, or by a scorer without tokens) uncounted

    def planned(self, pairs: int, tokens: int) -> None:
        self.known_pairs += pairs
        self.known_tokens += tokens

    def done(self, pairs: int, tokens: int | None) -> None:
        if tokens is None:
            self.untokenized_done += pairs
        else:
            self.done_tokens += tokens

    def left(self) -> float | None:
        """Tokens left to score (estimated for chunks not tokenized yet); None before any token is known."""
        if not self.known_pairs or not self.known_tokens:
            return None
        unseen = max(0, self.total_pairs - self.known_pairs - self.untokenized_done)
        return max(0, self.known_tokens - self.done_tokens) + unseen * self.known_tokens / self.known_pairs


class ShardProgress:
    """Pairs done across tasks and ranks, and tokens/s, reported through the job context (which derives
    the pairs/s and the ETA from the counts: core.job_status).

    Every rank writes its own count to results/progress-rankR.json; rank 0 adds them up, so the
    status shows the whole job's progress under scale-out too.
    """

    def __init__(self, ctx: jobs.JobContext, total: int):
        self.ctx, self.total = ctx, total
        self.done = self.done_at_start = 0
        self.tokens = 0
        self.work = WorkCount(total)
        self.first: float | None = None
        self.last_file = 0.0
        self.path = ctx.results_dir / f"progress-rank{ctx.rank}.json"

    def begin(self) -> None:
        """Throughput counts from when scoring starts, not from the model load."""
        if self.first is None:
            self.first = time.monotonic()
            self.ctx.restart_rate()

    def planned(self, pairs: int, tokens: int) -> None:
        """A chunk was tokenized: `tokens` for its `pairs` (for the ETA)."""
        self.work.planned(pairs, tokens)

    def add(self, pairs: int, tokens: int | None = None, computed: bool = True, **extra: Any) -> None:
        """`pairs` done, with their tokens if known (None: skipped before being tokenized)."""
        self.done += pairs
        self.work.done(pairs, tokens)
        if computed:
            self.tokens += tokens or 0
        else:
            self.done_at_start += pairs  # skipped (already written): not part of this run's throughput
        now = time.monotonic()
        if now - self.last_file > 0.5 or self.done >= self.total:
            write_json(self.path, {"done": self.done, "tokens": self.tokens})
            self.last_file = now
        done = self.done
        if self.ctx.world_size > 1:
            done = sum((read_json(p) or {}).get("done", 0) for p in self.ctx.results_dir.glob("progress-rank*.json"))
            done = max(done, self.done)
        elapsed = max(now - self.first, 1e-6) if self.first is not None else 0.0
        grand_total = self.total * self.ctx.world_size if self.ctx.world_size > 1 else self.total
        # This rank's tokens left at this rank's rate: ranks run equal shards side by side.
        own_rate = self.tokens / elapsed if elapsed else 0.0
        self.ctx.progress(done, grand_total, done_before=self.done_at_start * self.ctx.world_size,
                          tokens_per_s=round(own_rate * self.ctx.world_size, 1), work_left=self.work.left(),
                          work_rate=round(own_rate, 3), **extra)
