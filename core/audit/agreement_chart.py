"""The audit's chart: judge agreement per subset with Wilson 95% intervals, the paper's figure style.

Pure functions of an audit report (core.audit.audit_report.audit_report); plotly is imported lazily so that
the CLI's text report does not pay for it.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from marginlens.core.audit.subsets import ordered


def chart_frame(report: dict[str, Any]) -> pd.DataFrame:
    """One row per subset: agreement and its interval (the chart's data)."""
    rows = [{"subset": name, **{k: s[k] for k in ("agreement", "ci_low", "ci_high", "decisive", "n", "kappa",
                                                    "position_consistency", "invalid")}}
            for name, s in ordered(report["subsets"]).items()]
    return pd.DataFrame(rows)


def agreement_figure(report: dict[str, Any]):
    """Bar chart of judge agreement per subset with Wilson 95% intervals (the paper's figure style)."""
    import plotly.graph_objects as go

    frame = chart_frame(report)
    pct = frame["agreement"].astype(float) * 100
    fig = go.Figure(
        go.Bar(
            x=frame["subset"],
            y=pct,
            error_y={
                "type": "data",
                "symmetric": False,
                "array": (frame["ci_high"].astype(float) * 100 - pct).tolist(),
                "arrayminus": (pct - frame["ci_low"].astype(float) * 100).tolist(),
            },
            text=[f"{v:.0f}% (n={d})" if not math.isnan(v) else f"n={d}" for v, d in zip(pct, frame["decisive"],
                                                                                         strict=True)],
            textposition="outside",
            cliponaxis=False,  # a 100% bar's label sits above the axis range: keep it visible
            marker_color=["#1f77b4" if s == "map" else "#9aa5b1" for s in frame["subset"]],
        )
    )
    fig.update_layout(
        title=f"Judge agreement with the dataset's labels ({report['judge_model']})",
        yaxis={"title": "agreement (%)", "range": [0, 105]},
        xaxis={"title": "subset"},
        showlegend=False,
    )
    return fig

