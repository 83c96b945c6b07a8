"""Selective DPO (Gao et al. 2025, "Principled Data Selection for Alignment: The Hidden Risks of Difficult
Examples", arXiv:2502.09650, ICML 2025): examples harder than the model can learn hurt alignment, so the hardest
pairs by a reference model's validation loss are dropped and the easiest `ratio` kept. What replaces the
paper's held-out validation loss: docs/RULES.md; worked by hand in tests/test_rules_margins.py.
"""

from __future__ import annotations

import numpy as np
from marginlens.core.selection.metric_base import MarginInputs, Metric, MetricParams, register


def dpo_loss(margin: np.ndarray) -> np.ndarray:
    """-log sigmoid(margin), the DPO loss of one pair, without overflow for margins far from 0."""
    return np.logaddexp(0.0, -np.asarray(margin, dtype=np.float64))


@register
class SelectiveDpo(Metric):
    """score = -loss = log sigmoid(m_im): the smallest loss (the easiest pair) first, so the top `ratio` is the
    dataset minus its hardest (1 - ratio). The paper keeps 50%: --ratio 0.5.

    Approximated: the paper's difficulty is the DPO loss of each pair under reference models trained on the
    *other* half of the data (two halves, three seeds, six models, averaged); here it is the loss under the policy
    table the frame joins (m_im: the DPO form with --reference, else the SimPO form), measured in-sample. Not
    reproduced: the fold-trained models, and training in order from easy to hard (the trainer shuffles).
    """

    name = "selective_dpo"
    needs = ("m_im",)
    label = "Selective DPO: drop the hardest by DPO loss"
    description = ("Selective DPO (Gao et al. 2025): -log sigmoid(m_im) as each pair's loss, the easiest first, so "
                   "the top ratio drops the hardest pairs (the paper keeps half)")

    def formula(self, x: MarginInputs, p: MetricParams) -> np.ndarray:
        return -dpo_loss(x["m_im"])
