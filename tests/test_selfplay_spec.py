"""What a self-play run starts from, and what it refuses before anything runs: the seed prompts (a seeded
draw without the eval prompts, each its own root), an annotator that would need a reference answer the
rewrites cannot have, an evaluator that needs what the eval rows lack."""

from __future__ import annotations

import json

import pytest
from helpers_experiment import DATASET, build_dataset
from marginlens.core.data.ingest import import_dataset
from marginlens.core.errors import MarginLensError
from marginlens.core.experiments.experiment_plan import prompt_key
from marginlens.core.selfplay.selfplay_spec import build_selfplay_spec, seed_prompts
from marginlens.core.workspace import Workspace

ANNOTATE, EVAL = "verifier:self-consistency", "verifier:answer-match"


def test_seed_prompts_are_a_seeded_draw_without_the_eval_prompts(tmp_path):
    ws = build_dataset(tmp_path / "ws")
    spec = build_selfplay_spec(ws, DATASET, annotate=ANNOTATE, eval=EVAL, max_prompts=5)
    seeds = seed_prompts(ws, spec)
    assert seeds.n_prompts == 17 and seeds.held_out == len(seeds.eval_rows) == 2  # 10% of 17, rounded
    assert len(seeds.pool) == 5 and seed_prompts(ws, spec).pool == seeds.pool  # the same draw every time
    held = {prompt_key(r["prompt"]) for r in seeds.eval_rows}
    for row in seeds.pool:
        assert prompt_key(row["prompt"]) not in held and row["answer"] and row["task"] == "arithmetic"
        assert (row["parent"], row["strategy"], row["iteration"], row["root"]) == (None, None, 0, row["id"])
    everything = build_selfplay_spec(ws, DATASET, annotate=ANNOTATE, eval=EVAL, max_prompts=100)
    assert len(seed_prompts(ws, everything).pool) == 15  # every prompt that is not an eval prompt


def test_an_annotator_that_needs_a_reference_answer_is_refused(tmp_path):
    ws = build_dataset(tmp_path / "ws")
    with pytest.raises(MarginLensError, match="annotator verifier 'answer-match' needs the field.s. answer .*"
                                               "rewritten prompt has none"):
        build_selfplay_spec(ws, DATASET, annotate="verifier:answer-match", eval=EVAL)


def test_the_self_consistency_verifier_cannot_evaluate_a_model(tmp_path):
    ws = build_dataset(tmp_path / "ws")
    spec = build_selfplay_spec(ws, DATASET, annotate=ANNOTATE, eval="verifier:self-consistency")
    with pytest.raises(MarginLensError, match="sibling answers .* cannot evaluate a model"):
        seed_prompts(ws, spec)


def test_an_evaluator_needing_answers_on_a_dataset_without_them_names_the_row(tmp_path):
    source = tmp_path / "plain.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"Tell me about topic {i}.", "chosen": "Sure, here.",
                                          "rejected": "No."}) + "\n" for i in range(12)), encoding="utf-8")
    ws = Workspace(tmp_path / "ws")
    import_dataset(source, "plain", ws)
    spec = build_selfplay_spec(ws, "plain", annotate=ANNOTATE, eval=EVAL)
    with pytest.raises(MarginLensError, match=r"the held-out rows of dataset 'plain': row '\w+' has no 'answer', "
                                               "which verifier 'answer-match' needs"):
        seed_prompts(ws, spec)


def test_the_table_per_iteration_waits_for_no_stopped_chain(tmp_path):
    from marginlens.core.selfplay.selfplay_results import selfplay_table, table_lines

    ws = build_dataset(tmp_path / "ws")
    spec = build_selfplay_spec(ws, DATASET, annotate=ANNOTATE, eval=EVAL, metrics=["map"], seeds=2)
    state = {"baseline": {"mean": 0.1, "n": 2}, "chains": {
        "map/42": {"rounds": [{"iteration": 1, "eval": {"mean": 0.2, "n": 2}, "train": {"pairs": 7}, "last": True,
                               "note": "no rewrite survived the filters"}]},
        "map/43": {"rounds": [{"iteration": 1, "eval": {"mean": 0.4, "n": 2}, "train": {"pairs": 9}},
                              {"iteration": 2, "eval": {"mean": 0.5, "n": 2}, "train": {"pairs": 11}}]}}}
    table = selfplay_table(spec, state)
    first, second = (it["rows"][0] for it in table["iterations"])
    # mean 0.3, s = 0.141421, t(0.975, 1) = 12.706205: half-width 12.706205 * 0.141421 / sqrt(2) = 1.270620
    assert first["mean"] == pytest.approx(0.3) and first["ci_low"] == pytest.approx(0.3 - 1.270620, abs=1e-5)
    assert first["pairs"] == [7, 9] and second["pairs"] == [None, 11] and second["n_seeds"] == 1
    assert table["complete"] and table["baseline"]["mean"] == 0.1
    state["chains"]["map/42"]["rounds"][0].pop("last")  # a chain still going: iteration 2 waits for it
    assert not selfplay_table(spec, state)["complete"]
    assert "training pairs: - 11" in "\n".join(table_lines(table))
