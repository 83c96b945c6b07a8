"""The Ray engine's actor: one scorer, set up once, scoring the blocks of pairs Ray Data hands it.

Ray Data builds one instance per actor of the pool (`map_batches` with a callable class), so a model
loads once per actor and serves every block that actor receives. The scorer is rebuilt from the job's
params exactly as the job worker rebuilds it (core.scoring.score_spec.ScoreJobParams.from_json), and runs
through the same protocol calls as the local engine (`prepare`, `plan`, `compute` via `scored_rows`), so
any registered scorer runs here unchanged. This module imports no Ray: Ray imports it on every node.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from marginlens.core.scoring.score_spec import ScoreJobParams
from marginlens.core.scoring.scorers import PairBatch, scored_rows

# Columns the actor adds to each block it returns, for the driver's progress (never in the table).
TOKENS_COLUMN = "_ml_tokens"
ACTOR_COLUMN = "_ml_actor"


class ScorerActor:
    """`__init__` loads the model (once per actor); `__call__` scores one block of pairs (a pyarrow table
    of pair_id and the columns the scorer reads) into rows of the scorer's output schema."""

    def __init__(self, params: dict[str, Any], role: str, device: str, settings: dict[str, Any] | None,
                 threads: int | None, workspace: str | None, state_dir: str | None, world_size: int = 1) -> None:
        # Every actor is one process scoring on its own: a scorer that keeps a per-process budget (the LLM
        # rating) sees how many there are, as it does under --processes.
        os.environ["WORLD_SIZE"] = str(world_size)
        if threads:  # a CPU actor owns `threads` cores, not the whole node
            import torch

            torch.set_num_threads(threads)
        job = ScoreJobParams.from_json(params)
        task = next(t for t in job.tasks if t.role == role)
        self.scorer = task.scorer
        options = dataclasses.replace(job.run_options(device), workspace=workspace, state_dir=state_dir)
        self.scorer.setup(dataclasses.replace(options, **settings) if settings else options)
        self.schema = self.scorer.output_schema()
        self.name = f"{os.uname().nodename}:{os.getpid()}"

    def __call__(self, block: Any) -> Any:
        import pyarrow as pa

        rows = block.to_pylist()
        ids = [row["pair_id"] for row in rows]
        prepared = self.scorer.prepare(rows)
        out: list[dict[str, Any] | None] = [None] * len(rows)
        tokens = 0
        for indices in self.scorer.plan(prepared):
            batch = PairBatch.take(indices, ids, rows, prepared)
            tokens += self.scorer.n_tokens(batch)
            for i, row in zip(indices, scored_rows(self.scorer, batch), strict=True):
                out[i] = row
        missing = [ids[i] for i, row in enumerate(out) if row is None]
        if missing:
            raise RuntimeError(f"scorer {self.scorer.name!r} planned batches that leave out pair {missing[0]}")
        table = pa.Table.from_pylist(out, schema=self.schema)
        table = table.append_column(TOKENS_COLUMN, pa.array([tokens] + [0] * (len(rows) - 1), pa.int64()))
        return table.append_column(ACTOR_COLUMN, pa.array([self.name] * len(rows), pa.string()))
