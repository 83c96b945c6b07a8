"""LLM rating end to end against a real model: SmolLM2-135M-Instruct behind `transformers serve` on
127.0.0.1, rating through a real score job. A 135M rater has no taste worth testing: this checks that
its answers arrive, are parsed or kept as invalid with their raw text, and form the reward table."""

from __future__ import annotations

import json
import math

import pytest
from helpers_data import make_dataset
from helpers_serve import transformers_serve
from marginlens.core.scoring.models import smollm2_folder
from marginlens.core.scoring.rating_rubric import SCALE
from marginlens.core.scoring.score_spec import ScoreSpec
from marginlens.core.scoring.score_submit import submit_scoring
from marginlens.core.scoring.score_tables import load_score_table

pytestmark = pytest.mark.slow


def test_llm_rating_with_smollm2_behind_transformers_serve(ws, tmp_path):
    folder = smollm2_folder()
    make_dataset(ws, "real", [{"prompt": "What is the capital of France?", "chosen": "Paris.",
                               "rejected": "Berlin."}], tmp_path)
    with transformers_serve(folder, tmp_path / "serve.log") as base_url:
        spec = ScoreSpec(dataset="real", policy=None, explicit="llm_rating", explicit_value=str(folder),
                         scorer_options={"base_url": base_url, "timeout": 180, "max_output_tokens": 6,
                                         "max_calls": 6})
        handle = submit_scoring(ws, spec)
        status = handle.job.wait(timeout=480)
    # SmolLM2-135M may answer off the rubric with 6 tokens: then the job says so and fails, the table kept
    # (tests/test_llm_rating_invalid.py); either way the real model's answers are stored and counted.
    assert status.state in ("done", "failed"), handle.job.log_tail()
    if status.state == "failed":
        assert "ratings are invalid" in status.message and "--llm-rating OTHER_MODEL" in status.message

    row = load_score_table(ws, "real", handle.fingerprints["llm_rating"]).to_pylist()[0]
    records = [json.loads(line) for line in (ws.root / "ratings").rglob("ratings.jsonl").__next__().read_text()
               .splitlines() if line.strip()]
    assert len(records) == 2 and all(r["raw"] is not None and r["completion_tokens"] > 0 for r in records)
    for reward in (row["chosen_reward"], row["rejected_reward"]):
        assert math.isnan(reward) or SCALE[0] <= reward <= SCALE[1]
    assert row["invalid_ratings"] == sum(not r["valid"] for r in records)
    # failed exactly when most of its answers were off the rubric
    assert (status.state == "failed") == (sum(not r["valid"] for r in records) > len(records) / 2)
