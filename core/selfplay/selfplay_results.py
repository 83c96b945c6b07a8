"""A self-play run's table: per iteration, per metric, the evaluation's mean over seeds with a 95% t-interval
(core.experiments.experiment_results, the lab's statistics), the training pairs, and the starting model's row.

Iteration 0 is the starting model. A chain that stopped early (no rewrite survived) has no value in later
iterations; their mean is over the seeds that got there, and `n_seeds` says how many did.
"""

from __future__ import annotations

from typing import Any

from marginlens.core.experiments.experiment_results import cell_key, results_table


def selfplay_table(spec: Any, state: dict[str, Any]) -> dict[str, Any]:
    """`spec`: a SelfPlaySpec; `state`: the job's state.json ({"baseline", "chains": {key: {"rounds": [...]}}}).
    A row's "pairs" lists each seed's training pairs (None where that seed has no value); an iteration is
    complete when every chain still going at it has its value (a chain that stopped early is not waited for)."""
    baseline = state.get("baseline") or {}
    base = {k: baseline[k] for k in ("mean", "n", "invalid", "wins", "ties", "losses", "eval_job")
            if baseline.get(k) is not None} if baseline.get("mean") is not None else None
    chains = state.get("chains") or {}
    iterations = []
    for t in range(1, spec.iterations + 1):
        cells, expected, got = {}, 0, 0
        for metric, seed in spec.chains:
            rounds = chains.get(cell_key(metric, seed), {}).get("rounds", [])
            stopped = any(r.get("last") and r.get("iteration", t) < t for r in rounds)
            expected += not stopped
            record = next((r for r in rounds if r.get("iteration") == t), None)
            value = (record or {}).get("eval", {}).get("mean")
            if value is not None:
                got += 1
                cells[cell_key(metric, seed)] = {"mean": value, "n": record["eval"].get("n"),
                                                 "pairs": record.get("train", {}).get("pairs")}
        table = results_table(spec.metrics, spec.seeds, cells, base, spec.evaluator.label)
        for row in table["rows"]:
            row["pairs"] = [cells.get(cell_key(row["metric"], seed), {}).get("pairs") for seed in spec.seeds]
        iterations.append({"iteration": t, "rows": table["rows"], "complete": base is not None and got == expected})
    return {"evaluator": spec.evaluator.label, "seeds": list(spec.seeds), "metrics": list(spec.metrics),
            "interval": results_table(spec.metrics, spec.seeds, {}, None, "")["interval"], "baseline": base,
            "iterations": iterations, "complete": bool(iterations) and all(i["complete"] for i in iterations)}


def table_lines(table: dict[str, Any]) -> list[str]:
    """The table as text (the CLI's report): one line per iteration and metric."""
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [f"evaluator: {table['evaluator']}; {table['interval']}"]
    base = table.get("baseline")
    lines.append(f"  iteration 0 (starting model): {fmt(base.get('mean') if base else None)}")
    for it in table["iterations"]:
        for row in it["rows"]:
            interval = (f" [{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]" if row.get("ci_low") is not None else "")
            values = " ".join(fmt(v) for v in row["values"])
            pairs = " ".join("-" if p is None else str(p) for p in row.get("pairs") or [])
            lines.append(f"  iteration {it['iteration']} {row['metric']:<10} {fmt(row['mean'])}{interval}"
                         f"  per seed: {values}  training pairs: {pairs or '-'}")
    return lines
