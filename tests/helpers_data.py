"""Small synthetic datasets and score tables for the selection/export tests, built through the real
ingester (core.data.ingest.import_dataset) and the real score-table writer."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from marginlens.core.data.ingest import import_dataset
from marginlens.core.scoring.score_tables import save_score_table
from marginlens.core.workspace import Workspace


def wait_until(predicate, what: str, timeout: float = 120.0):
    """The first truthy value of `predicate()`, polled every 0.1 s; an AssertionError naming `what` at `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def standard_records(n: int, seed: int = 0, scores: bool = True) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rec = {"prompt": f"Question {i}: what is {i} plus {i}?", "chosen": f"It is {2 * i}.",
               "rejected": f"It is {2 * i + int(rng.integers(1, 9))}, I think."}
        if scores:
            rec["score_chosen"] = float(np.round(rng.normal(5, 2), 3))
            rec["score_rejected"] = float(np.round(rng.normal(3, 2), 3))
        out.append(rec)
    return out


def conversational_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Name colour {i} ünïcode"}]
        out.append({
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": f"Colour {i} is blue."}],
            "rejected": [{"role": "assistant", "content": f"Colour {i} is {'green' * (1 + i % 3)}."}],
            "score_chosen": float(np.round(rng.normal(5, 2), 3)),
            "score_rejected": float(np.round(rng.normal(3, 2), 3)),
        })
    return out


def hh_records(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        prompt = f"\n\nHuman: Tell me fact {i}.\n\nAssistant:"
        out.append({"chosen": prompt + f" Fact {i} is true.", "rejected": prompt + f" No idea about {i}."})
    return out


def make_dataset(ws: Workspace, name: str, records: list[dict[str, Any]], tmp: Path, fmt: str | None = None):
    source = write_jsonl(tmp / f"{name}-source.jsonl", records)
    import_dataset(source, name=name, workspace=ws, format=fmt)
    return ws.load_pairs(name)


def save_logprobs(ws: Workspace, name: str, fp: str, pair_ids: list[str], chosen_logp, chosen_ntok,
                  rejected_logp, rejected_ntok, truncated=None) -> None:
    n = len(pair_ids)
    table = pa.table({
        "pair_id": pair_ids,
        "chosen_logp": np.asarray(chosen_logp, dtype=float),
        "chosen_ntok": np.asarray(chosen_ntok, dtype=np.int64),
        "rejected_logp": np.asarray(rejected_logp, dtype=float),
        "rejected_ntok": np.asarray(rejected_ntok, dtype=np.int64),
        "truncated": np.zeros(n, dtype=bool) if truncated is None else np.asarray(truncated, dtype=bool),
    })
    save_score_table(ws, name, fp, "logprob", table, model=f"model-{fp}", spec={"fp": fp})


def save_rewards(ws: Workspace, name: str, fp: str, pair_ids: list[str], chosen, rejected) -> None:
    table = pa.table({"pair_id": pair_ids, "chosen_reward": np.asarray(chosen, dtype=float),
                      "rejected_reward": np.asarray(rejected, dtype=float),
                      "truncated": np.zeros(len(pair_ids), dtype=bool)})
    save_score_table(ws, name, fp, "reward", table, model=f"rm-{fp}", spec={"fp": fp})


def random_logprobs(ws: Workspace, name: str, fp: str = "pol", seed: int = 1) -> dict[str, np.ndarray]:
    """A random policy table for every pair of `name`; returns the arrays written."""
    ids = ws.load_pairs(name)["pair_id"]
    rng = np.random.default_rng(seed)
    n = len(ids)
    arrays = {
        "chosen_logp": -rng.uniform(1, 60, n), "chosen_ntok": rng.integers(1, 30, n),
        "rejected_logp": -rng.uniform(1, 60, n), "rejected_ntok": rng.integers(1, 30, n),
    }
    save_logprobs(ws, name, fp, list(ids), **arrays)
    return arrays
