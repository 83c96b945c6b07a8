"""Theorem 3.1 of Huang et al. (ICML 2025) made visible: a linear Bradley-Terry simulation that trains the same
learner on the same pool of pairs twice, once sampling pairs uniformly and once sampling them adversarially by
M_AP, and records how fast each one approaches the true parameters.

The setting, per seed:
- true parameters theta* in R^d (a random direction, norm `theta_norm`);
- a pool of pairs; each pair is the feature difference x = phi(chosen) - phi(rejected) ~ N(0, I_d);
- labels from Bradley-Terry, P(first answer preferred) = sigma(theta* . x), then an extra label flip with
  probability `noise` (annotation noise); x is oriented so that it always points from rejected to chosen;
- explicit margin m_ex = theta_rm . x, where theta_rm is a reward model: theta* plus an error of relative size
  `rm_noise` (0: the reward model knows theta*);
- implicit margin m_im = theta_t . x, the learner's current margin;
- training: minibatch SGD on the logistic (DPO-form) loss -log sigma(theta . x), `batch` pairs per iteration,
  a constant learning rate, theta_0 a random vector of norm ~1;
- samplers: uniform over the pool, or adversarial: recompute M_AP = z(m_ex) - w z(|m_im|) over the whole pool at
  every iteration and draw the batch uniformly (with replacement) from its top `top_share`; a hard top share,
  not a softmax, because that is how the selection itself works (top k by M_AP).

The reported error is the distance of the normalised directions, ||theta_t/|theta_t| - theta*/|theta*|||, in
[0, 2]: with label noise the loss's minimiser is a shrunken multiple of theta* (symmetric flips attenuate the
logistic fit), so ||theta_t - theta*|| has a floor set by the noise rate rather than by the sampler, while the
direction is what ranks pairs. The raw distance is recorded too.

Both samplers see the same theta*, pool, labels, reward model and theta_0 (common random numbers), and every
seed owns its random streams, so a seed's curves do not depend on how many seeds run beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from marginlens.core.errors import MarginLensError
from marginlens.core.experiments.experiment_results import t_quantile
from marginlens.core.selection.metric_base import zscore

SAMPLERS = ("uniform", "adversarial")
# Guards that keep one run interactive: pool memory (seeds x pool x d floats) and its time, `work` units of
# about a nanosecond each on one CPU core (measured on a busy 2-core machine: the adversarial margins and
# ranking per pooled pair, the batch gathers, and a fixed cost per iteration); the cap keeps a run near 1.5 s.
MAX_POOL_CELLS = 20_000_000
MAX_WORK = 1_500_000_000
PER_PAIR = 26
PER_BATCH_ROW = 8
PER_ITERATION = 300_000



@dataclass(frozen=True)
class TheorySpec:
    d: int = 10
    pool: int = 2000
    noise: float = 0.2
    iterations: int = 300
    seeds: int = 10
    lr: float = 0.1
    w: float = 1.0
    batch: int = 8
    top_share: float = 0.1
    theta_norm: float = 3.0
    rm_noise: float = 0.0
    seed: int = 0  # seeds are seed, seed + 1, ...


def work(spec: TheorySpec) -> int:
    """The run's estimated cost in about-a-nanosecond units (see MAX_WORK)."""
    per_step = spec.pool * (spec.d + PER_PAIR) + PER_BATCH_ROW * spec.batch * spec.d
    return spec.seeds * spec.iterations * per_step + PER_ITERATION * spec.iterations


@dataclass(frozen=True)
class SamplerCurve:
    sampler: str
    direction: np.ndarray  # (seeds, iterations + 1): direction distance per seed and iteration
    distance: np.ndarray  # (seeds, iterations + 1): ||theta_t - theta*||
    flipped_share: np.ndarray  # (seeds,): share of the sampled pairs whose label the extra noise flipped

    def band(self, raw: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean over seeds and its 95% t-interval, mean +- t(0.975, seeds - 1) * s / sqrt(seeds), as the lab's
        tables compute it (zero width for one seed)."""
        values = self.distance if raw else self.direction
        mean = values.mean(axis=0)
        n = values.shape[0]
        if n < 2:
            return mean, mean.copy(), mean.copy()
        half = t_quantile(n - 1) * values.std(axis=0, ddof=1) / np.sqrt(n)
        return mean, mean - half, mean + half

    def final(self, raw: bool = False) -> float:
        return float((self.distance if raw else self.direction)[:, -1].mean())


@dataclass(frozen=True)
class TheoryResult:
    spec: TheorySpec
    curves: dict[str, SamplerCurve]

    @property
    def iterations(self) -> np.ndarray:
        return np.arange(self.spec.iterations + 1)


def _check(spec: TheorySpec) -> None:
    def bad(field: str, why: str) -> MarginLensError:
        return MarginLensError(f"theory simulation, field '{field}': {why} (got {getattr(spec, field)!r})")

    ints = {"d": (1, 1000), "pool": (10, 1_000_000), "iterations": (1, 100_000), "seeds": (1, 1000),
            "batch": (1, 1_000_000), "seed": (0, 2**32 - 1)}
    for field, (lo, hi) in ints.items():
        value = getattr(spec, field)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise bad(field, "must be an integer")
        if not lo <= value <= hi:
            raise bad(field, f"must be between {lo} and {hi}")
    for field in ("noise", "lr", "w", "top_share", "theta_norm", "rm_noise"):
        value = getattr(spec, field)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise bad(field, "must be a number")
        if not np.isfinite(value):
            raise bad(field, "must be finite")
    if not 0 <= spec.noise < 0.5:
        raise bad("noise", "the flip rate must be in [0, 0.5): at 0.5 the labels carry no signal")
    if spec.lr <= 0:
        raise bad("lr", "must be positive")
    if spec.w < 0 or spec.rm_noise < 0:
        raise bad("w" if spec.w < 0 else "rm_noise", "must be >= 0")
    if spec.theta_norm <= 0:
        raise bad("theta_norm", "must be positive")
    if not 0 < spec.top_share <= 1 or int(spec.top_share * spec.pool) < 1:
        raise bad("top_share", f"must be in (0, 1] and keep at least one of the {spec.pool} pairs")
    if spec.seeds * spec.pool * spec.d > MAX_POOL_CELLS:
        raise bad("pool", f"seeds x pool x d = {spec.seeds * spec.pool * spec.d:,} exceeds {MAX_POOL_CELLS:,}")
    if work(spec) > MAX_WORK:
        raise bad("iterations", f"about {work(spec) / 1e9:.1f} s of computing, over the "
                                f"{MAX_WORK / 1e9:.1f} s an interactive run may take: lower iterations, seeds, pool or d")


def _zscore(values: np.ndarray) -> np.ndarray:
    """Row-wise (per seed) population z-score, the selection metrics' own (a constant row scores 0)."""
    return zscore(values, "margins", axis=1)[0]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


@dataclass(frozen=True)
class _World:
    theta_star: np.ndarray  # (S, d)
    x: np.ndarray  # (S, N, d), oriented from rejected to chosen
    flipped: np.ndarray  # (S, N) bool: the extra noise flipped this label
    m_ex: np.ndarray  # (S, N)
    theta0: np.ndarray  # (S, d)
    draws: np.ndarray  # (S, T, B) uniform integers in [0, 2**31): indices, reduced per sampler


def _world(spec: TheorySpec) -> _World:
    parts = []
    for s in range(spec.seeds):
        # one generator per (seed, purpose): adding a purpose or a seed never shifts another's numbers
        world_rng, draw_rng = (np.random.default_rng([spec.seed + s, purpose]) for purpose in (0, 1))
        direction = world_rng.standard_normal(spec.d)
        theta_star = spec.theta_norm * direction / np.linalg.norm(direction)
        x = world_rng.standard_normal((spec.pool, spec.d))
        first_wins = world_rng.random(spec.pool) < _sigmoid(x @ theta_star)
        flipped = world_rng.random(spec.pool) < spec.noise
        sign = np.where(first_wins ^ flipped, 1.0, -1.0)
        x = x * sign[:, None]
        rm_error = world_rng.standard_normal(spec.d) * (spec.rm_noise * spec.theta_norm / np.sqrt(spec.d))
        theta0 = world_rng.standard_normal(spec.d) / np.sqrt(spec.d)
        draws = draw_rng.integers(0, 2**31, size=(spec.iterations, spec.batch))
        parts.append((theta_star, x, flipped, x @ (theta_star + rm_error), theta0, draws))
    return _World(*(np.stack(column) for column in zip(*parts, strict=True)))


def _run(spec: TheorySpec, world: _World, sampler: str) -> SamplerCurve:
    n_seeds, pool = world.flipped.shape
    top_k = int(spec.top_share * pool)
    z_ex = _zscore(world.m_ex)
    theta = world.theta0.copy()
    rows = np.arange(n_seeds)[:, None]
    star_unit = world.theta_star / np.linalg.norm(world.theta_star, axis=1, keepdims=True)
    direction = np.empty((n_seeds, spec.iterations + 1))
    distance = np.empty_like(direction)
    flipped_count = np.zeros(n_seeds)

    def record(t: int) -> None:
        norm = np.linalg.norm(theta, axis=1, keepdims=True)
        unit = np.divide(theta, norm, out=np.zeros_like(theta), where=norm > 0)
        direction[:, t] = np.linalg.norm(unit - star_unit, axis=1)
        distance[:, t] = np.linalg.norm(theta - world.theta_star, axis=1)

    record(0)
    for t in range(spec.iterations):
        if sampler == "uniform":
            picked = world.draws[:, t] % pool
        else:
            m_im = np.einsum("snd,sd->sn", world.x, theta)
            score = z_ex - spec.w * _zscore(np.abs(m_im))
            top = np.argpartition(-score, top_k - 1, axis=1)[:, :top_k]
            picked = np.take_along_axis(top, world.draws[:, t] % top_k, axis=1)
        batch_x = world.x[rows, picked]  # (S, B, d)
        flipped_count += world.flipped[rows, picked].sum(axis=1)
        # gradient of -log sigma(theta . x) is -(1 - sigma(theta . x)) x
        weight = 1.0 - _sigmoid(np.einsum("sbd,sd->sb", batch_x, theta))
        theta = theta + spec.lr * np.einsum("sb,sbd->sd", weight, batch_x) / spec.batch
        record(t + 1)
    return SamplerCurve(sampler, direction, distance, flipped_count / (spec.iterations * spec.batch))


NOISY_RM = 1.0  # the reward-model error of the comparison: an error as large as theta* itself


def reward_model_cases(spec: TheorySpec = TheorySpec()) -> dict[str, TheoryResult]:
    """`spec` run twice, with an exact reward model ("exact", rm_noise 0) and a noisy one ("noisy", rm_noise
    NOISY_RM): M_AP's gain rests on m_ex, so the pair shows how much of it a wrong reward model takes away."""
    return {"exact": simulate(replace(spec, rm_noise=0.0)), "noisy": simulate(replace(spec, rm_noise=NOISY_RM))}


def simulate(spec: TheorySpec = TheorySpec()) -> TheoryResult:
    """Both samplers on the same worlds. Deterministic: the same spec gives the same numbers."""
    _check(spec)
    world = _world(spec)
    return TheoryResult(spec, {sampler: _run(spec, world, sampler) for sampler in SAMPLERS})
