"""The Ray engine's overhead: local engine against Ray on one node, and a simulated two-node cluster (not a test).

    python bench/ray_scale.py                       # 1,000 pairs, SmolLM2-135M-Instruct, float32, CPU
    python bench/ray_scale.py --pairs 200 --no-cluster

The pairs are the built-in demo's, repeated with a numbered prompt suffix until there are --pairs of them
(new content, new pair ids). Each engine scores them in a fresh workspace through `submit_scoring`, as
`marginlens score` does, and the wall time covers the whole job: the worker's start, the model load(s)
and, for Ray, Ray's start. Printed: seconds, pairs/s, the ratio Ray / local (target: within 1.25x at
1,000 pairs on one node) and the largest log-prob difference from the local table.

  local        the local engine: one process, torch on every core (its default threads)
  ray-1node    a local Ray started for the job, one CPU actor per core (one torch thread each)
  ray-2nodes   ray.cluster_utils.Cluster: two raylets on this machine, half the cores each
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_pairs(path: Path, n: int) -> None:
    from marginlens.core.demo.build import PAIRS_FILE

    with gzip.open(PAIRS_FILE, "rt", encoding="utf-8") as fh:
        base = [json.loads(line) for line in fh if line.strip()]
    rows = []
    for i in range(n):
        row = dict(base[i % len(base)])
        copy = i // len(base)
        if copy:  # a new pair: the same texts, a prompt that differs by its suffix
            row["prompt"] = _suffixed(row["prompt"], f" (variant {copy})")
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _suffixed(prompt, suffix: str):
    if isinstance(prompt, str):
        return prompt + suffix
    messages = [dict(m) for m in prompt]
    messages[-1]["content"] = messages[-1]["content"] + suffix
    return messages


def run(name: str, root: Path, data: Path, env: dict[str, str] | None, args: argparse.Namespace) -> dict:
    from marginlens.core.data.ingest import import_dataset
    from marginlens.core.scoring.score_spec import ScoreSpec
    from marginlens.core.scoring.score_submit import submit_scoring
    from marginlens.core.scoring.score_tables import load_score_table
    from marginlens.core.workspace import Workspace

    ws = Workspace(root / name)
    import_dataset(data, name="scale", workspace=ws)
    spec = ScoreSpec("scale", dtype="float32", device="cpu", max_length=args.max_length,
                     max_prompt_length=args.max_length * 3 // 4)
    start = time.perf_counter()
    handle = submit_scoring(ws, spec, env=env)
    status = handle.job.wait(timeout=args.timeout)
    seconds = time.perf_counter() - start
    if status.state != "done":
        raise SystemExit(f"{name}: the job ended {status.state}: {handle.job.log_tail(20)}")
    table = {r["pair_id"]: r for r in load_score_table(ws, "scale", handle.fingerprints["policy"]).to_pylist()}
    return {"name": name, "seconds": seconds, "pairs": len(table), "table": table, "extra": status.extra or {}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=512, help="tokens per pair (prompt: 3/4 of it)")
    parser.add_argument("--no-cluster", action="store_true", help="leave out the simulated two-node cluster")
    parser.add_argument("--block-pairs", type=int, default=64,
                        help="pairs per Ray block (several blocks per actor keep every actor busy to the end)")
    parser.add_argument("--timeout", type=float, default=7200)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from marginlens.core.scoring.ray_cluster import engine_env

    cores = os.cpu_count() or 1
    small = {"MARGINLENS_RAY_DASHBOARD": "0", "MARGINLENS_RAY_CPUS": str(cores),
             "MARGINLENS_RAY_BLOCK_PAIRS": str(args.block_pairs)}
    root = Path(tempfile.mkdtemp(prefix="marginlens-ray-scale-"))
    try:
        data = root / "pairs.jsonl"
        make_pairs(data, args.pairs)
        results = [run("local", root, data, None, args),
                   run("ray-1node", root, data, {**engine_env("ray"), **small}, args)]
        if not args.no_cluster:
            results.append(_two_nodes(root, data, args, cores))
        _print(results, cores)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def _two_nodes(root: Path, data: Path, args: argparse.Namespace, cores: int) -> dict:
    from marginlens.core.scoring.ray_cluster import engine_env
    from ray.cluster_utils import Cluster

    half = max(1, cores // 2)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": half, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=half)
        cluster.wait_for_nodes()
        env = {**engine_env("ray", address=cluster.address), "MARGINLENS_RAY_BLOCK_PAIRS": str(args.block_pairs)}
        return run("ray-2nodes", root, data, env, args)
    finally:
        cluster.shutdown()


def _print(results: list[dict], cores: int) -> None:
    local = results[0]
    print(f"{local['pairs']} pairs, SmolLM2-135M-Instruct float32 on {cores} CPU cores")
    print(f"{'run':<11} {'seconds':>8} {'pairs/s':>8} {'x local':>8} {'max |dlogp|':>12} actors")
    for r in results:
        diff = max(abs(r["table"][k][s] - local["table"][k][s]) for k in local["table"]
                   for s in ("chosen_logp", "rejected_logp"))
        print(f"{r['name']:<11} {r['seconds']:>8.1f} {r['pairs'] / r['seconds']:>8.2f} "
              f"{r['seconds'] / local['seconds']:>8.2f} {diff:>12.2e} {r['extra'].get('actors_seen', '-')}")


if __name__ == "__main__":
    sys.exit(main())
