"""Published selection rules beside the paper's baselines, one registry class each (core.selection.metric_base).

Registered after map, explicit, implicit and random, in this order; core.selection.metrics imports
this module, so every consumer of the registry sees them. Each formula is worked by hand in
tests/test_published_rules.py.

  threshold  keep m_ex >= tau, then a seeded random sample    large-margin filtering (Rosset et al. 2024)
  rip        min of three percentile ranks over m_ex >= 0      RIP (Yu et al. 2025)
  dpo_gap    -z(m_im), m_im in the DPO form only              DPO implicit-gap difficulty (Qi et al. 2025)

and then, one module each (docs/RULES.md says what each reproduces and what not):
  bees           sigmoid(m_ex/std + m_im/std), largest first    Less is More (core.selection.bayes_margin)
  chosen_reward  z(r_rejected + m_ex), the chosen reward        What Matters in Data for DPO? (chosen_quality)
  selective_dpo  -log sigmoid(m_im) loss, easiest first         Selective DPO (core.selection.selective_dpo)
  clean, clean_flip  2 of 3 noise signals: remove / flip        PrefCleanBench (core.selection.signal_cleaning)

What the papers do that is not reproduced here is said in each class.
"""

from __future__ import annotations

import numpy as np
from marginlens.core.selection.metric_base import MarginInputs, Metric, MetricParams, random_scores, register


def at_most_share(values: np.ndarray) -> np.ndarray:
    """Per value, the share of the values at most as large: #{j : v_j <= v_i} / n (ties share the larger rank).

    Keeping the pairs whose share is >= t is the filter "v above its (1 - t) quantile": a rule stated as
    thresholds on several quantities becomes one ranking by the smallest of their shares."""
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    if n == 0:
        return v.copy()
    # one argsort and linear passes: searchsorted of a million unsorted queries costs several times more
    order = np.argsort(v)  # ties share one value, so the order among them does not matter
    ordered = v[order]
    run = np.r_[0, np.cumsum(ordered[1:] != ordered[:-1])]  # run of equal values each sorted position is in
    last = np.r_[np.flatnonzero(ordered[1:] != ordered[:-1]), n - 1]  # last sorted position of each run
    share = np.empty(n)
    share[order] = (last[run] + 1) / n
    return share


@register
class RewardMarginThreshold(Metric):
    """Keep the pairs whose explicit margin is at least tau; rank them in a seeded random order.

    A filter, not a ranking: reward-margin filtering keeps every pair whose reward gap clears a bar and
    trains on all of them; the practical algorithm of Direct Nash Optimization (Rosset et al. 2024, "Direct
    Nash Optimization: Teaching Language Models to Self-Improve with General Preferences", arXiv:2404.03715)
    trains only on such large-margin pairs. To compare it with the other metrics at the same budget k, the
    passing pairs are ordered by the random baseline's permutation (the same seed, so tau = -inf selects
    exactly what `random` selects): the top-k is a uniform sample of the passing pairs, and all of them when
    fewer than k pass (select() then warns how many). Not reproduced: DNO's margins come from GPT-4 scores of
    on-policy samples, its bar from its own score scale; tau here is in the units of whatever m_ex is.
    """

    name = "threshold"
    needs = ("m_ex",)
    uses = ("threshold", "seed")
    label = "threshold: m_ex ≥ τ, seeded sample"
    description = ("keep the pairs with m_ex >= tau (--threshold, the explicit margin's units), a seeded random "
                   "sample of them: reward-margin filtering, as in DNO's large-margin pairs (Rosset et al. 2024)")

    def formula(self, x: MarginInputs, p: MetricParams) -> np.ndarray:
        return random_scores(x.n, p.seed)

    def eligible(self, x: MarginInputs, p: MetricParams) -> tuple[np.ndarray, str]:
        return x["m_ex"] >= p.threshold, f"m_ex >= {p.threshold:g}"


@register
class RejectedQualitySmallGap(Metric):
    """RIP, Rejecting Instruction Preferences (Yu et al. 2025, "R.I.P.: Better Models by Survival of the Fittest
    Prompts", arXiv:2501.18578, ICML 2025): a prompt is kept when its rejected answer scores well, its
    rejected answer is not short, and the reward gap chosen - rejected is small; each is a threshold.

    Over the pairs RIP would form (m_ex >= 0: RIP's chosen answer is the higher-rewarded one), with n of them,
        u_rej(i) = #{j : r_rejected_j    <= r_rejected_i} / n      rejected answer's explicit reward
        u_len(i) = #{j : rejected_chars_j <= rejected_chars_i} / n  rejected answer's length
        u_gap(i) = #{j : m_ex_j          >= m_ex_i} / n             small reward gap
        score(i) = min(u_rej, u_len, u_gap)                         (0 for pairs with m_ex < 0, never selected)
    Keeping score >= t is exactly RIP's three filters, each set at the same quantile; the top-k by score is
    that filter with t lowered until k pairs pass. Not reproduced: RIP tunes each of its thresholds on its
    own, scores N sampled responses per prompt and pairs the best with the worst (here: the dataset's pair,
    so a pair the reward model ranks the other way is not RIP's and is left out), and measures length in
    the paper's units (here: characters of the rejected answer).
    """

    name = "rip"
    needs = ("m_ex", "r_rejected", "rejected_chars")
    label = "RIP: rejected scores well, small gap"
    description = ("RIP (Yu et al. 2025): rejected answer's reward high, rejected answer long, reward gap small; "
                   "the smallest of the three percentile ranks, over the pairs with m_ex >= 0")

    def formula(self, x: MarginInputs, p: MetricParams) -> np.ndarray:
        keep = x["m_ex"] >= 0
        score = np.zeros(x.n)
        if keep.any():
            score[keep] = np.minimum.reduce([at_most_share(x["r_rejected"][keep]),
                                             at_most_share(x["rejected_chars"][keep]),
                                             at_most_share(-x["m_ex"][keep])])
        return score

    def eligible(self, x: MarginInputs, p: MetricParams) -> tuple[np.ndarray, str]:
        return x["m_ex"] >= 0, "m_ex >= 0 (RIP's chosen answer has the higher reward)"


@register
class DpoImplicitGap(Metric):
    """Difficulty by the DPO implicit reward gap, smallest first (Qi, Xu & Jin 2025, "Difficulty-Based Preference
    Data Selection by DPO Implicit Reward Gap", arXiv:2508.04149): pairs whose DPO implicit reward
    beta * log(pi/ref) separates chosen from rejected least are the hardest and are selected first.

        score = -z(m_im),  m_im = beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))]

    It reads m_im only in the DPO form (the frame's m_im_dpo column, set when a reference table is joined);
    on a SimPO-form frame it refuses and says how to score a reference. On such a frame it ranks exactly like
    `implicit` with --signed; it is the published rule by name, and it cannot silently run on the SimPO form.
    Not reproduced: which policy and reference the paper scores with (here: the tables the user joins), and
    its training recipe around the selection.
    """

    name = "dpo_gap"
    needs = ("m_im_dpo",)
    direction = "smaller"
    label = "DPO gap: -z(m_im), smallest first"
    description = ("the DPO implicit reward gap beta*[(pi_w-ref_w)-(pi_l-ref_l)], smallest (hardest) first "
                   "(Qi, Xu & Jin 2025); needs the DPO form: --reference TABLE")

    def formula(self, x: MarginInputs, p: MetricParams) -> np.ndarray:
        return x.z("m_im_dpo")


# Rules published since the paper, one module each (docs/RULES.md), registered after these three in this order.
from marginlens.core.selection import bayes_margin, chosen_quality, selective_dpo, signal_cleaning  # noqa: E402

PUBLISHED_RULES = (RewardMarginThreshold.name, RejectedQualitySmallGap.name, DpoImplicitGap.name,
                   bayes_margin.BayesMarginProbability.name, selective_dpo.SelectiveDpo.name,
                   chosen_quality.ChosenReward.name, signal_cleaning.SignalCleaning.name,
                   signal_cleaning.SignalCleaningFlip.name)
