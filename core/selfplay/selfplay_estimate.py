"""A self-play run's plan, in time and learning rates: the wall-time range of its rounds and evaluations
(core.run_estimate) and the learning rate each round's steps get (core.training.lr_schedule). `spec` is a
core.selfplay.selfplay_spec.SelfPlaySpec, `seeds` its SeedPrompts (not imported: that module calls this one)."""

from __future__ import annotations

from typing import Any

from marginlens.core.workspace import Workspace


def selfplay_estimate(ws: Workspace, spec: Any, seeds: Any, n: int, strategies: int,
                      resolved: dict[str, Any], disk: tuple[int, int] | None) -> Any:
    """Wall time of every chain's rounds one after another (sampling, margins, evolving, training, each an
    upper bound as in selfplay_spec._disk_line) and of every evaluation (core.run_estimate)."""
    from marginlens.core.run_estimate import (
        combine,
        generating,
        measured_rates,
        model_params,
        scoring,
        training,
    )

    rates = measured_rates(ws, resolved["device"], spec.policy, model_params(spec.policy))
    trl = resolved["trl"]
    epochs = float(trl.get("num_train_epochs", 1.0))
    sample_tokens, rewrite_tokens = spec.sampling_params(0).max_new_tokens, spec.evolve_params(0).max_new_tokens
    local = spec.evolver.get("kind") == "local"
    parts: dict[str, list[float]] = {"sampling": [0, 0], "scoring answers": [0, 0], "evolving": [0, 0],
                                     "training": [0, 0]}
    prompts, asked = len(seeds.pool), 0
    for _ in range(spec.iterations):
        rewrites = max(1, int(spec.ratio * prompts)) * strategies
        sampled = n * (prompts + rewrites)
        pieces = {"sampling": generating(rates, sampled * sample_tokens), "scoring answers": scoring(rates, sampled),
                  "evolving": generating(rates, rewrites * rewrite_tokens) if local else (0.0, 0.0),
                  "training": training(rates, int(epochs * (prompts + rewrites)) + 1)}
        for name, (lo, hi) in pieces.items():
            parts[name][0] += lo
            parts[name][1] += hi
        asked += rewrites
        prompts = rewrites
    chains = len(spec.chains)
    evaluator = spec.evaluator
    evaluate = generating(rates, len(seeds.eval_rows) * evaluator.max_new_tokens * (2 if evaluator.kind == "judge"
                                                                                    else 1))
    untimed = [] if local else [f"up to {chains * asked:,} rewrite requests to {spec.evolver.get('model')}"]
    untimed += [f"the {kind} requests to its endpoint" for kind, ask in (
        ("annotator", spec.annotator.asks_llm), ("evaluator", evaluator.asks_llm)) if ask]
    timed = [(name, chains, (lo, hi)) for name, (lo, hi) in parts.items() if hi > 0]
    return combine(rates.device, rates, [*timed, ("evaluating a model", chains * spec.iterations + 1, evaluate)],
                   disk, untimed)


def schedule_lines(spec: Any, pool: int, strategies: int) -> list[str]:
    """Each round's learning rates, at the most pairs a round can train on (core.training.lr_schedule)."""
    from marginlens.core.experiments.experiment_plan import schedule_notes
    from marginlens.core.training.lr_schedule import steps_per_run
    from marginlens.core.training.settings import resolve_settings

    resolved = resolve_settings(spec.method, spec.preset, spec.overrides, spec.device)
    prompts, steps = pool, []
    for _ in range(spec.iterations):
        rewrites = max(1, int(spec.ratio * prompts)) * strategies
        steps.append(steps_per_run(prompts + rewrites, resolved["trl"], resolved["settings"]))
        prompts = rewrites
    return [f"each round, at most: {line}" for line in schedule_notes(resolved["trl"], steps)]
