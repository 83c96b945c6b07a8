"""A new scorer is one class. LengthScorer below is registered here and nowhere else; it is planned and
fingerprinted, offered by `marginlens score`, run by the real job worker (a separate process, which
imports this module because $MARGINLENS_SCORER_MODULES names it) and its table is read back by the
same readers as any explicit-margin table."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from helpers_data import make_dataset, standard_records
from marginlens.core.atomic import read_json
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.score_spec import ScoreSpec, plan_tasks
from marginlens.core.scoring.score_submit import submit_scoring
from marginlens.core.scoring.score_tables import KIND_SCHEMAS, load_score_table, score_manifest
from marginlens.core.scoring.scorers import (
    PLUGINS_ENV,
    SCORERS,
    ExplicitOption,
    PairBatch,
    RunOptions,
    Scorer,
    explicit_scorers,
    register,
)
from marginlens.core.selection.margins import default_scorers


@dataclass(frozen=True)
class LengthConfig:
    unit: str  # "chars" or "words"


@register
class LengthScorer(Scorer[LengthConfig]):
    """Explicit rewards from response lengths: a job scorer (not inline) with its own batching, a setting the
    batch plan depends on, and a column of its own beside the reward kind's."""

    name = "test_length"
    roles = ("length",)
    table_kind = "reward"
    config_type = LengthConfig
    option = ExplicitOption("--length", "UNIT", "explicit margin from response lengths", "response length",
                            "chars or words", default="chars")

    @classmethod
    def output_schema(cls) -> pa.Schema:
        return pa.schema([*KIND_SCHEMAS["reward"], pa.field("longer", pa.string())])

    @classmethod
    def configure(cls, spec: ScoreSpec, value: str) -> LengthScorer:
        if value not in ("chars", "words"):
            raise MarginLensError(f"length unit must be chars or words, not {value!r}")
        return cls(LengthConfig(value))

    def setup(self, run: RunOptions) -> None:
        super().setup(run)
        self.batch_pairs = run.max_pairs or 3

    def plan_settings(self) -> dict[str, Any]:
        return {"max_pairs": self.batch_pairs}

    def plan(self, prepared: list[Any]) -> list[list[int]]:
        n = len(prepared)
        return [list(range(i, min(i + self.batch_pairs, n))) for i in range(0, n, self.batch_pairs)]

    def compute(self, batch: PairBatch) -> list[dict[str, Any]]:
        def size(text: str) -> float:
            return float(len(text) if self.config.unit == "chars" else len(text.split()))

        return [{"chosen_reward": size(r["chosen"]), "rejected_reward": size(r["rejected"]),
                 "longer": "chosen" if size(r["chosen"]) > size(r["rejected"]) else "rejected"} for r in batch.rows]


def test_registered_once_offered_everywhere():
    assert SCORERS["test_length"] is LengthScorer and LengthScorer in explicit_scorers()
    from marginlens.core.cli import build_parser

    args = build_parser().parse_args(["score", "d", "--policy", "none", "--length", "words"])
    from marginlens.core.cli.score_commands import _spec

    spec = _spec(args)
    assert (spec.explicit, spec.explicit_value, spec.policy) == ("test_length", "words", None)
    (task,) = plan_tasks(spec)
    assert task.role == "length" and task.fingerprint.startswith("reward-test_length-")
    assert task.to_json()["scorer"] == {"version": 1, "kind": "reward", "unit": "words"}
    assert plan_tasks(ScoreSpec("d", policy=None, explicit="test_length"))[0].scorer.config.unit == "chars"
    with pytest.raises(MarginLensError, match="chars or words, not 'bytes'"):
        plan_tasks(ScoreSpec("d", policy=None, explicit="test_length", explicit_value="bytes"))


def test_a_new_scorer_runs_through_the_real_worker(ws, tmp_path):
    make_dataset(ws, "d", standard_records(10, scores=False), tmp_path)
    spec = ScoreSpec("d", policy=None, explicit="test_length", explicit_value="words")
    tests_dir = str(Path(__file__).parent)
    env = {PLUGINS_ENV: __name__, "PYTHONPATH": os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")]))}
    handle = submit_scoring(ws, spec, env=env)
    assert handle.job is not None and handle.cached == []
    status = handle.job.wait(timeout=120)
    assert status.state == "done", handle.job.log_tail()
    fingerprint = handle.fingerprints["length"]
    assert handle.job.result()["tables"] == {"length": fingerprint}
    log = handle.job.log_path.read_text()
    assert "loading length scorer test_length" in log and "scoring 10 pairs, max pairs 3" in log

    table = load_score_table(ws, "d", fingerprint)
    assert table.schema.names == ["pair_id", "chosen_reward", "rejected_reward", "truncated", "longer"]
    pairs = ws.load_pairs("d")
    assert table.column("pair_id").to_pylist() == pairs["pair_id"]  # dataset order
    rows = table.to_pylist()
    assert [(r["chosen_reward"], r["rejected_reward"]) for r in rows] == [
        (float(len(c.split())), float(len(r.split()))) for c, r in zip(pairs["chosen"], pairs["rejected"], strict=True)]
    assert {r["longer"] for r in rows} == {"rejected"} and not any(r["truncated"] for r in rows)
    manifest = score_manifest(ws, "d", fingerprint)
    assert manifest["kind"] == "reward" and manifest["model"] == "test_length"
    assert manifest["spec"] == {"version": 1, "kind": "reward", "unit": "words", "role": "length",
                                "dataset_fingerprint": ws.dataset_manifest("d")["fingerprint"], "truncated_pairs": 0,
                                "dataset_pairs": 10, "scored_pairs": 10}
    assert read_json(handle.job.results_dir / fingerprint / "plan-rank0.json") == {"max_pairs": 3}  # kept for resumes
    # The readers take it like any explicit-margin table; submitting again is a cache hit.
    assert default_scorers(ws, "d")["reward"] == fingerprint
    again = submit_scoring(ws, spec)
    assert again.job is None and again.cached == ["length"]


def test_names_and_roles_are_unique():
    with pytest.raises(TypeError, match="role 'length' belongs to scorer 'test_length'"):
        @register
        class Another(LengthScorer):
            name = "another_length"

    with pytest.raises(TypeError, match="two scorers named 'columns'"):
        @register
        class Columns(LengthScorer):
            name = "columns"
            roles = ("other",)
    assert "another_length" not in SCORERS and SCORERS["columns"].__name__ == "ColumnScorer"


def test_the_builtin_explicit_scorers_keep_their_flags():
    from marginlens.core.cli import build_parser
    from marginlens.core.cli.score_commands import _spec

    parser = build_parser()
    rm = _spec(parser.parse_args(["score", "d", "--reward-model", "/models/rm"]))
    assert (rm.explicit, rm.explicit_value) == ("reward_model", "/models/rm")
    columns = _spec(parser.parse_args(["score", "d", "--scores", "all_rm_scores"]))
    assert (columns.explicit, columns.explicit_value) == ("columns", "all_rm_scores")
    assert _spec(parser.parse_args(["score", "d"])).explicit is None
    with pytest.raises(SystemExit):  # one explicit source at most
        parser.parse_args(["score", "d", "--reward-model", "x/y", "--scores", "a,b"])
