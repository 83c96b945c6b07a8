"""Less is More (Deng et al. 2025, "Less is More: Improving LLM Alignment via Preference Data Selection",
arXiv:2502.14560, the BeeS selection): margin maximisation with the external and implicit margins combined into
one preference probability; the pairs most surely preferred are kept. Formula and what is approximated:
docs/RULES.md; worked by hand in tests/test_rules_margins.py.
"""

from __future__ import annotations

import numpy as np
from marginlens.core.selection.metric_base import MarginInputs, Metric, MetricParams, register


def unit_scale(values: np.ndarray, name: str, x: MarginInputs) -> np.ndarray:
    """values / their population std, not centred: a margin's sign is what it says (0 = no preference), so only
    its units are removed. A constant source carries no ranking information: it is left in its own units."""
    spread = float(values.std()) if values.size else 0.0
    if spread > 0 and np.isfinite(spread):
        return values / spread
    if values.size:
        x.warnings.append(f"{name} is constant ({values[0]:g}) over {values.size:,} pairs: it is used unscaled")
    return values


@register
class BayesMarginProbability(Metric):
    """Each margin becomes a Bradley-Terry preference probability, p_s = sigmoid(m_s / std(m_s)), and the two are
    combined as independent evidence under a uniform prior:

        P(chosen > rejected) = p_ex p_im / (p_ex p_im + (1 - p_ex)(1 - p_im)) = sigmoid(m_ex/std(m_ex) + m_im/std(m_im))

    The largest P is selected first, ranked by its log-odds (the score shown): the same order, without the ties
    float64 makes once heavy-tailed margins push P to exactly 1. Unlike M_AP, a large *signed* implicit margin counts in a pair's favour:
    both sources are evidence that the label is right. Approximated: the paper's own calibration of each source
    (here: unit std over the candidates) and its implicit margin (the DPO form of a trained policy; here: m_im in
    whichever form the frame holds).
    """

    name = "bees"
    needs = ("m_ex", "m_im")
    label = "Less is More: P(label) from both margins"
    description = ("Less is More (Deng et al. 2025, BeeS): sigmoid(m_ex/std + m_im/std), the external and implicit "
                   "margins as one preference probability, largest first (the score: its log-odds)")

    def formula(self, x: MarginInputs, p: MetricParams) -> np.ndarray:
        return unit_scale(x["m_ex"], "m_ex", x) + unit_scale(x["m_im"], "m_im", x)
