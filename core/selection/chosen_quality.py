"""The chosen answer's own quality ("What Matters in Data for DPO?", 2025, arXiv:2508.18312): the
quality of the chosen response dominates what DPO learns, the rejected one matters far less; so pairs are
selected by the chosen answer's reward. Worked by hand in tests/test_rules_margins.py; docs/RULES.md.
"""

from __future__ import annotations

import numpy as np
from marginlens.core.selection.metric_base import MarginInputs, Metric, MetricParams, register


@register
class ChosenReward(Metric):
    """score = z(r_chosen), r_chosen = r_rejected + m_ex: the chosen answer's explicit reward on m_ex's scale.

    The frame stores both responses' rewards (score_chosen and score_rejected from the dataset, chosen_reward and
    rejected_reward from a reward table); r_rejected is the rejected one on the scale m_ex is taken from, so
    r_rejected + m_ex is exactly the chosen one from the same source. A rule built from the paper's finding: the
    paper studies the effect and does not state a selection algorithm; its quality is a reward model's score,
    as here.
    """

    name = "chosen_reward"
    needs = ("m_ex", "r_rejected")
    label = "chosen quality: z(r_chosen)"
    description = ("the chosen answer's own reward, largest first: its quality dominates DPO ('What Matters in "
                   "Data for DPO?', arXiv:2508.18312); needs per-response rewards")

    def formula(self, x: MarginInputs, p: MetricParams) -> np.ndarray:
        return x.z("r_chosen", x["r_rejected"] + x["m_ex"])
