"""An experiment's table: per metric the mean of the evaluation over seeds with a 95% interval, the
per-seed values, the baseline row, and the audit's judge agreement per subset when an audit exists.

The interval is Student's t over the seeds (n - 1 degrees of freedom): mean +- t(0.975, n-1) * s / sqrt(n),
s the sample standard deviation. It says how much the result moves with the training seed (and, for
the random metric, the subset drawn), not how noisy the eval set is. One seed gives no interval.

Worked example (tests/test_experiment_results.py repeats it): values 0.2, 0.4, 0.6 -> mean 0.4,
s = 0.2, t(0.975, 2) = 4.302653, half-width 4.302653 * 0.2 / sqrt(3) = 0.496828 -> [-0.096828, 0.896828].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from marginlens.core.workspace import Workspace

INTERVAL_METHOD = "95% t-interval over seeds (Student's t, n-1 degrees of freedom)"
ONE_SEED = "one seed: no interval (run --seeds 2 or more for one)"
# An audit records the pairs it sampled, not the ratio or score tables it drew them with, and draws from
# the whole dataset (held-out prompts included): its subsets are never shown as the experiment's own.
AUDIT_SUBSETS = ("different subsets: the audit's own draw (each metric's top-k of the whole dataset at the "
                 "audit's ratio and score tables), not the pairs this experiment trained on")


def t_quantile(df: int, level: float = 0.95) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def mean_interval(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, the t-interval and its half-width over the values given (None values are left out)."""
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(kept)
    if n == 0:
        return {"n_seeds": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None, "half_width": None}
    mean = sum(kept) / n
    if n == 1:
        return {"n_seeds": 1, "mean": mean, "std": None, "ci_low": None, "ci_high": None, "half_width": None}
    std = math.sqrt(sum((v - mean) ** 2 for v in kept) / (n - 1))
    half = t_quantile(n - 1) * std / math.sqrt(n)
    return {"n_seeds": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half,
            "half_width": half}


def results_table(
    metrics: Sequence[str],
    seeds: Sequence[int],
    cells: Mapping[str, Mapping[str, Any]],
    baseline: Mapping[str, Any] | None,
    evaluator: str,
) -> dict[str, Any]:
    """The experiment's table from the cells done so far.

    `cells`: "metric/seed" -> {"mean": float, "n": prompts, "pairs": training pairs, ...};
    `baseline`: {"mean", "n"} of the starting model. Rows in `metrics` order; missing cells are None.
    """
    rows = []
    for metric in metrics:
        per_seed = [cells.get(cell_key(metric, seed), {}).get("mean") for seed in seeds]
        stats = mean_interval(per_seed)
        done = [cells[cell_key(metric, s)] for s in seeds if cell_key(metric, s) in cells]
        rows.append({
            "metric": metric, **stats, "values": per_seed,
            "n_prompts": done[0].get("n") if done else None,
            "pairs": done[0].get("pairs") if done else None,
        })
    return {
        "evaluator": evaluator,
        "seeds": list(seeds),
        "interval": INTERVAL_METHOD if len(seeds) > 1 else ONE_SEED,
        "baseline": dict(baseline) if baseline else None,
        "rows": rows,
        "complete": all(r["n_seeds"] == len(seeds) for r in rows) and baseline is not None,
    }


def cell_key(metric: str, seed: int) -> str:
    return f"{metric}/{seed}"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_lines(table: Mapping[str, Any], agreement: Mapping[str, Any] | None = None) -> list[str]:
    """The table as text (the CLI's and the bench's output)."""
    subsets = (agreement or {}).get("subsets", {})
    head = ["metric", "mean", "95% interval", "per seed", "n prompts", "pairs"]
    if subsets:
        head.append(f"judge agreement ({agreement['judge_model']}, audit's own subsets)")
    body = []
    base = table.get("baseline")
    if base:
        body.append(["baseline (starting model)", _fmt(base.get("mean")), "-", "-", str(base.get("n", "-")), "-"]
                    + (["-"] if subsets else []))
    for row in table["rows"]:
        interval = "-" if row["ci_low"] is None else f"[{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]"
        line = [row["metric"], _fmt(row["mean"]), interval, " ".join(_fmt(v) for v in row["values"]),
                "-" if row["n_prompts"] is None else str(row["n_prompts"]),
                "-" if row["pairs"] is None else str(row["pairs"])]
        if subsets:
            s = subsets.get(row["metric"])
            line.append("-" if not s or s.get("agreement") is None else
                        f"{s['agreement']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}] of {s['decisive']}")
        body.append(line)
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = [f"{table['evaluator']}: {table['interval']}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *body]]
    if subsets:
        lines.append(f"judge agreement: audit {agreement.get('audit_job')}; {AUDIT_SUBSETS}")
    return lines


def audit_agreement(ws: Workspace, dataset: str) -> dict[str, Any] | None:
    """The newest audit of `dataset` that judged anything: its judge agreement per subset (subsets are the
    metrics' top-k of the whole dataset, as the audit drew them: "subsets" says so). None when there is none."""
    from marginlens.core.audit.audit_job import list_audits
    from marginlens.core.audit.audit_params import AuditParams
    from marginlens.core.audit.audit_report import audit_report
    from marginlens.core.errors import MarginLensError

    for job in list_audits(ws, dataset):
        try:
            report = audit_report(ws, AuditParams.from_dict(job.spec["params"]))
        except (MarginLensError, KeyError, TypeError, ValueError):  # an old or unreadable audit spec must not
            # hide the experiment's own table
            continue
        if any(s.get("decisive") for s in report["subsets"].values()):
            keep = ("agreement", "ci_low", "ci_high", "decisive", "n")
            return {"judge_model": report["judge_model"], "audit_job": job.id, "same_subsets": False,
                    "subsets_note": AUDIT_SUBSETS,
                    "subsets": {name: {k: s.get(k) for k in keep} for name, s in report["subsets"].items()}}
    return None
