"""The Experiments page's Theory tab: the Theorem 3.1 simulation (core.experiments.theory) with its controls, a
chart of the error against iterations for both samplers, and the assumptions beside it."""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from marginlens.core.errors import MarginLensError
from marginlens.core.experiments.theory import NOISY_RM, SAMPLERS, TheoryResult, TheorySpec, simulate

COLORS = {"uniform": ("#9e9e9e", "rgba(158,158,158,0.25)"), "adversarial": ("#2e7d32", "rgba(46,125,50,0.25)")}
LABELS = {"uniform": "uniform sampling", "adversarial": "adversarial (M_AP) sampling"}
KEY = "_theory_"

CLAIM = """
**What the paper claims (Theorem 3.1, in our words).** In preference learning on a Bradley-Terry model, a learner
that picks its training pairs adversarially -- by how much there is still to learn on them, which is what M_AP
measures: a large explicit (reward-model) margin the learner's implicit margin has not reached yet -- needs fewer
iterations than one that samples pairs uniformly to shrink its parameter error by a given factor (the theorem
compares each sampler at its own best learning rate; here both run the one learning rate you set).

*Our model is a reading of that claim; it has not been checked line by line against the theorem's exact
assumptions and constants.*
"""

ASSUMPTIONS = """
**What this simulation models.**
- Linear Bradley-Terry: reward `theta . phi`; a pair is its feature difference `x ~ N(0, I_d)`; the true
  `theta*` has norm 3.
- Labels drawn from BT, `P = sigma(theta* . x)`, then flipped at the *label noise* rate.
- Explicit margin `m_ex = theta_rm . x` from a reward model; *reward-model error* 0 means `theta_rm = theta*`.
- Implicit margin `m_im = theta_t . x`. Training: minibatch SGD on `-log sigma(theta . x)` (the DPO/logistic
  form), constant learning rate, `theta_0` random.
- Adversarial: `M_AP = z(m_ex) - w z(|m_im|)` over the whole pool, recomputed every iteration; the batch is
  drawn uniformly from its top share (a hard cut, like the selection itself, not a softmax).
- Both samplers share `theta*`, the pool, its labels, `theta_0` and the learning rate per seed. Band: the 95%
  t-interval over seeds, mean +- t(0.975, seeds - 1) standard errors, as the Experiments tab computes it.
- Error: distance of the unit directions, `|theta_t/|theta_t| - theta*/|theta*||`. The raw distance
  `|theta_t - theta*|` mixes in the scale, which label noise shrinks (uniform) and margin selection inflates
  (adversarial); tick *raw distance* to see it.

**What it simplifies.** A fixed pool instead of fresh samples; Gaussian features; one linear model instead of
a language model; no reference model or beta; M_AP recomputed over the whole pool at every step, which a real
run cannot afford (the lab selects once, offline).

**What it does not show.**
- That the selection helps a language model: that is the Experiments tab's question, on real data.
- An adversarial sampler better than its reward model: with reward-model error it converges to the reward
  model's direction, not to `theta*`'s.
- The scale: training on confidently labelled pairs keeps growing `|theta_t|`, so the raw distance of the
  adversarial run falls and then rises again.
"""


@st.cache_data(max_entries=32, show_spinner=False)
def _simulate(fields: tuple[tuple[str, float], ...]) -> TheoryResult:
    return simulate(TheorySpec(**dict(fields)))


def theory_figure(result: TheoryResult, raw: bool = False, height: int = 420) -> go.Figure:
    """Mean error per iteration and its 95% band, one colour per sampler."""
    t = result.iterations
    figure = go.Figure()
    for sampler in SAMPLERS:
        line, fill = COLORS[sampler]
        mean, lo, hi = result.curves[sampler].band(raw)
        figure.add_trace(go.Scatter(x=np.concatenate([t, t[::-1]]), y=np.concatenate([hi, lo[::-1]]),
                                    fill="toself", fillcolor=fill, line={"width": 0}, hoverinfo="skip",
                                    name=f"{LABELS[sampler]}, 95% band", showlegend=False))
        figure.add_trace(go.Scatter(x=t, y=mean, mode="lines", line={"color": line, "width": 2},
                                    name=LABELS[sampler]))
    label = "|theta_t - theta*|" if raw else "|theta_t/|theta_t| - theta*/|theta*||"
    figure.update_layout(xaxis_title="iteration", yaxis_title=label, height=height, margin={"t": 30, "b": 40},
                         legend={"orientation": "h", "y": 1.08}, hovermode="x unified")
    figure.update_yaxes(rangemode="tozero")
    return figure


def _controls() -> tuple[TheorySpec, bool]:
    default = TheorySpec()
    cols = st.columns(4)
    d = cols[0].number_input("dimension d", 1, 200, default.d, key=KEY + "d")
    pool = cols[1].number_input("pool size (pairs)", 50, 20_000, default.pool, step=100, key=KEY + "pool")
    iterations = cols[2].number_input("iterations", 10, 3000, default.iterations, step=50, key=KEY + "iterations")
    seeds = cols[3].number_input("seeds", 1, 50, default.seeds, key=KEY + "seeds")
    cols = st.columns(4)
    noise = cols[0].slider("label noise (flip rate)", 0.0, 0.45, default.noise, 0.05, key=KEY + "noise")
    lr = cols[1].number_input("learning rate", 0.001, 10.0, default.lr, 0.05, format="%.3f", key=KEY + "lr")
    w = cols[2].slider("w in z(m_ex) - w z(|m_im|)", 0.0, 3.0, default.w, 0.25, key=KEY + "w")
    raw = cols[3].toggle("raw distance", False, key=KEY + "raw",
                         help="|theta_t - theta*| instead of the distance of the unit directions")
    with st.expander("More settings"):
        cols = st.columns(4)
        batch = cols[0].number_input("batch size", 1, 256, default.batch, key=KEY + "batch")
        top_share = cols[1].slider("adversarial top share", 0.01, 1.0, default.top_share, 0.01, key=KEY + "top")
        rm_noise = cols[2].slider("reward-model error", 0.0, 1.0, default.rm_noise, 0.05, key=KEY + "rm",
                                  help="|theta_rm - theta*| relative to |theta*| (in expectation)")
        seed = cols[3].number_input("first seed", 0, 10_000, default.seed, key=KEY + "seed")
    spec = TheorySpec(d=int(d), pool=int(pool), noise=float(noise), iterations=int(iterations), seeds=int(seeds),
                      lr=float(lr), w=float(w), batch=int(batch), top_share=float(top_share),
                      theta_norm=default.theta_norm, rm_noise=float(rm_noise), seed=int(seed))
    return spec, bool(raw)


def render_theory() -> None:
    st.markdown(CLAIM)
    spec, raw = _controls()
    try:
        result = _simulate(tuple(asdict(spec).items()))
    except MarginLensError as exc:
        st.error(str(exc))
        return
    uniform, adversarial = result.curves["uniform"], result.curves["adversarial"]
    cols = st.columns(4)
    cols[0].metric("final error, uniform", f"{uniform.final(raw):.3f}")
    cols[1].metric("final error, adversarial", f"{adversarial.final(raw):.3f}")
    cols[2].metric("flipped labels trained on, uniform", f"{uniform.flipped_share.mean():.1%}")
    cols[3].metric("flipped labels trained on, adversarial", f"{adversarial.flipped_share.mean():.1%}")
    chart, notes = st.columns([3, 2])
    chart.plotly_chart(theory_figure(result, raw), width="stretch", key=KEY + "chart",
                       config={"displaylogo": False})
    chart.caption(f"Mean over {spec.seeds} seed(s) with its 95% t-interval band (mean +- t(0.975, "
                  f"{spec.seeds - 1} df) standard errors; no band for one seed); "
                  "the error axis is " + ("the raw parameter distance." if raw else "the distance of the directions."))
    notes.markdown(ASSUMPTIONS)
    _reward_model_cases(spec, raw)


def _reward_model_cases(spec: TheorySpec, raw: bool) -> None:
    """The same settings with an exact and with a noisy reward model, side by side, and what the gap means."""
    cases = {"exact": replace(spec, rm_noise=0.0), "noisy": replace(spec, rm_noise=NOISY_RM)}
    results = {name: _simulate(tuple(asdict(case).items())) for name, case in cases.items()}
    st.subheader("When the reward model is wrong")
    titles = {"exact": "Reward model right (reward-model error 0)",
              "noisy": f"Noisy reward model (reward-model error {NOISY_RM:g})"}
    for column, (name, result) in zip(st.columns(2), results.items(), strict=True):
        column.markdown(f"**{titles[name]}**")
        inner = column.columns(2)
        for cell, sampler in zip(inner, SAMPLERS, strict=True):
            cell.metric(f"{name} RM: final error, {sampler}", f"{result.curves[sampler].final(raw):.3f}")
        column.plotly_chart(theory_figure(result, raw, height=320), width="stretch", key=f"{KEY}chart_{name}",
                            config={"displaylogo": False})
    exact, noisy = (results[n].curves for n in ("exact", "noisy"))
    st.markdown(
        f"**What this means.** M_AP trains on the pairs where the reward model is sure and the learner is not yet, "
        f"so its gain relies on the reward model being right. With the right reward model it ends at "
        f"{exact['adversarial'].final(raw):.3f} against uniform sampling's {exact['uniform'].final(raw):.3f}, "
        f"partly because a right reward model steers it away from mislabelled pairs "
        f"({exact['adversarial'].flipped_share.mean():.1%} flipped labels trained on, against "
        f"{exact['uniform'].flipped_share.mean():.1%}). With a bad reward model it selects confidently wrong "
        f"pairs and ends at {noisy['adversarial'].final(raw):.3f}, "
        + ("worse than" if noisy["adversarial"].final(raw) > noisy["uniform"].final(raw) else "against")
        + f" uniform sampling's {noisy['uniform'].final(raw):.3f}, which never reads the reward model. Check the "
        "reward model before selecting by M_AP: a wrong one makes the selection harmful, not just useless.")
