"""A score job's progress: pairs done across tasks and ranks, and tokens/s, through the job context."""

from __future__ import annotations

import time
from typing import Any

from marginlens.core import jobs
from marginlens.core.atomic import read_json, write_json


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
        self.first: float | None = None
        self.last_file = 0.0
        self.path = ctx.results_dir / f"progress-rank{ctx.rank}.json"

    def begin(self) -> None:
        """Throughput counts from when scoring starts, not from the model load."""
        if self.first is None:
            self.first = time.monotonic()
            self.ctx.restart_rate()

    def add(self, pairs: int, tokens: int = 0, computed: bool = True, **extra: Any) -> None:
        self.done += pairs
        if computed:
            self.tokens += tokens
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
        self.ctx.progress(done, grand_total, done_before=self.done_at_start * self.ctx.world_size,
                          tokens_per_s=round(self.tokens / elapsed * self.ctx.world_size, 1) if elapsed else 0.0,
                          **extra)
