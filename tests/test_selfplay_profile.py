"""Self-play's reference profile (core.selfplay.profiles): its settings against the defaults of the authors'
evol_select/ scripts, and its rules at work -- the argsort pick (last highest, first lowest, ties kept at
margin 0), a prompt with an empty answer dropped whole, the train_size cap's random draw -- in a real rollout
job on a tiny Llama where a model is needed."""

from __future__ import annotations

import importlib
import json
import os
import sys

import numpy as np
import pytest
from helpers_experiment import DATASET, build_dataset
from marginlens.core.errors import MarginLensError
from marginlens.core.experiments import verifiers
from marginlens.core.experiments.evaluators import parse_eval
from marginlens.core.experiments.generation import GenerationParams, generate_responses, user_messages
from marginlens.core.job_status import JobState
from marginlens.core.selfplay.profiles import (
    SYSTEM_PROMPT,
    best_and_worst_argsort,
    cap_pairs,
    empty_answer,
    reference_settings,
)
from marginlens.core.selfplay.prompt_pool import filter_rewrites, write_pool
from marginlens.core.selfplay.rollout_job import pairs_path, rollout_summary, submit_rollout
from marginlens.core.selfplay.selfplay_spec import build_selfplay_spec
from marginlens.core.workspace import Workspace
from tiny_models import single_thread, tiny_llama  # noqa: F401  (session fixture)

single_thread()

# The authors' defaults, read from their scripts (Hesse73/Alignment-Potential-Metric, evol_select/):
# setting                      value                     where
SCRIPT_DEFAULTS = {
    "system_prompt":           (SYSTEM_PROMPT,           "gen_pair_data.py:101, evol_instruct.py:93"),
    "system_prompt_gemma":     (None,                    "gen_pair_data.py:97-99, evol_instruct.py:89-91"),
    "n":                       (5,                       "gen_pair_data.py:23 --num_gen"),
    "temperature":             (0.8,                     "gen_pair_data.py:20, evol_instruct.py:14"),
    "top_p":                   (0.95,                    "gen_pair_data.py:21, evol_instruct.py:15"),
    "max_new_tokens":          (4096,                    "gen_pair_data.py:22 --max_tokens"),
    "evolve_max_new_tokens":   (4096,                    "evol_instruct.py:16 --max_tokens"),
    "pairing":                 ("argsort",               "gen_pair_data.py:212-213 rm_sorted[-1], rm_sorted[0]"),
    "drop_empty":              (True,                    "gen_pair_data.py:125-134 no_response"),
    "margin":                  ("sampled",               "gen_pair_data.py:109 logprobs=0, 123-129 logp / len"),
    "length_filter":           (None,                    "gen_pair_data.py:28 --filter_prompt store_true"),
    "length_ratio":            (5.0,                     "gen_pair_data.py:29 --len_diff"),
    "train_size":              (10_000,                  "process_dataset.py:9 --train_size"),
    "ratio":                   (0.25,                    "evol_instruct.py:21 --select_ratio"),
    "metric":                  ("map",                   "evol_instruct.py:19 rm-logp, 34-35 z(rm) - z(|logp|)"),
    "weight":                  (1.0,                     "evol_instruct.py:35 (w = 1; logp_weight is rm-xlogp's)"),
    "signed":                  (False,                   "gen_pair_data.py:220 logp_margin_norm_abs"),
    "seed":                    (42,                      "gen_pair_data.py:26 --seed"),
}


@pytest.fixture
def sp_ws(tmp_path):
    return build_dataset(tmp_path / "workspace")


def test_reference_profile_settings_are_the_scripts_defaults(sp_ws):
    want = {k: v for k, (v, _) in SCRIPT_DEFAULTS.items()}
    cpu = build_selfplay_spec(sp_ws, DATASET, annotate="verifier:self-consistency", eval="verifier:answer-match",
                              device="cpu")
    sampling, evolve = cpu.sampling_params(want["seed"]), cpu.evolve_params(want["seed"])
    gpu_sampling, gpu_evolve, gpu_rules = reference_settings("org/some-model", "org/some-model", "cuda:0", False, None)
    got = {
        "system_prompt": cpu.rules["system_prompt"], "n": sampling.n, "temperature": sampling.temperature,
        "top_p": sampling.top_p, "max_new_tokens": gpu_sampling["max_new_tokens"],
        "evolve_max_new_tokens": gpu_evolve["max_new_tokens"], "pairing": cpu.rules["pairing"],
        "drop_empty": cpu.rules["drop_empty"], "margin": cpu.rules["margin"], "length_filter": evolve.max_ratio,
        "train_size": cpu.rules["train_size"], "ratio": cpu.ratio, "metric": cpu.metrics[0], "weight": cpu.weight,
        "signed": cpu.signed, "seed": cpu.seeds[0],
        "system_prompt_gemma": reference_settings("google/gemma-2-9b-it", "x", "cpu", False, None)[2]["system_prompt"],
        "length_ratio": reference_settings("m", "m", "cpu", True, None)[1]["max_ratio"],
    }
    assert got == want
    assert (evolve.temperature, evolve.top_p, evolve.system_prompt) == (0.8, 0.95, SYSTEM_PROMPT)
    assert gpu_rules == cpu.rules
    # on CPU the token limits stay at 128, and the plan says so
    assert (sampling.max_new_tokens, evolve.max_new_tokens) == (128, 128)
    assert cpu.to_params()["rules"]["profile"] == "reference"


def test_marginlens_profile_keeps_the_params_of_runs_planned_before_profiles(sp_ws):
    ours = build_selfplay_spec(sp_ws, DATASET, annotate="verifier:self-consistency", eval="verifier:answer-match",
                               profile="marginlens")
    assert "rules" not in ours.to_params() and ours.evolve_params(0).max_ratio == 5.0
    with pytest.raises(MarginLensError, match="options of --profile reference"):
        build_selfplay_spec(sp_ws, DATASET, annotate="verifier:self-consistency", eval="verifier:answer-match",
                            profile="marginlens", train_size=5)
    with pytest.raises(MarginLensError, match="unknown self-play profile 'paper'"):
        build_selfplay_spec(sp_ws, DATASET, annotate="verifier:self-consistency", eval="verifier:answer-match",
                            profile="paper")


@pytest.mark.parametrize(("rewards", "expected"), [
    ([0.1, 0.9, 0.3, 0.9, 0.1], (3, 0)),  # last of the highest, first of the lowest
    ([2.0, 0.0, 2.0, 0.0, 1.0], (2, 1)),
    ([0.5, 0.5, 0.5], (2, 0)),  # a tie is a pair: the last answer over the first, margin 0
    ([None, 0.2, float("nan"), 0.2], (3, 1)),  # unscored answers are no candidates
    ([None, 0.7, None], ("invalid", "1 valid reward(s) of 3")),
])
def test_argsort_pick(rewards, expected):
    assert best_and_worst_argsort(rewards) == expected
    valid = [r for r in rewards if r is not None and not np.isnan(r)]
    if len(valid) == len(rewards):  # what the reference computes, np.argsort's ends
        order = np.argsort(np.array(rewards))
        assert (int(order[-1]), int(order[0])) == expected


def test_empty_answer_and_length_filter_off():
    assert empty_answer(["a", "", "b"], [3, 0, 2]) == 1
    assert empty_answer(["a", "b"], [3, 0]) == 1  # no token generated
    assert empty_answer(["a", " "], [1, 1]) is None  # whitespace is text
    parents = {"p": {"id": "p", "prompt": "Why?"}}
    long = {"id": "p>x", "parent": "p", "prompt": "Why " * 40}
    assert filter_rewrites([long], parents, set(), max_ratio=None)[0] == [long]
    assert filter_rewrites([long], parents, set(), max_ratio=5.0)[1][0]["reason"] == "too_long"


def test_train_size_cap_is_the_references_random_draw():
    pairs = [{"id": f"r{i}"} for i in range(50)]
    saved = np.random.get_state()
    try:  # the reference: np.random.seed(42), then np.random.choice(len(ds), train_size, replace=False)
        np.random.seed(42)
        theirs = np.random.choice(len(pairs), 7, replace=False)
    finally:
        np.random.set_state(saved)
    assert cap_pairs(pairs, 7) == [pairs[i] for i in theirs]
    assert len({p["id"] for p in cap_pairs(pairs, 7)}) == 7
    assert cap_pairs(pairs, 50) == pairs and cap_pairs(pairs, None) == pairs  # no more than the cap: all, in order


# --- the rules in a real rollout job ----------------------------------------------------------------------
VERIFIER, MODULE = "profile-test", "profile_test_verifier"
PLUGIN = f'''
from marginlens.core.experiments.verifiers import Verifier, register_verifier


def _check(response, row):
    if "[tie]" in row["prompt"]:
        return 0.5
    return (len(response) % 3) / 2  # few distinct values: ties among the best and the worst are common


register_verifier(Verifier({VERIFIER!r}, "1", "test only: length mod 3", _check, needs=()))
'''
PARAMS = GenerationParams(max_new_tokens=8, do_sample=True, temperature=1.5, top_p=1.0, seed=3, n=4, batch_size=4)
RULES = {"profile": "reference", "pairing": "argsort", "drop_empty": True, "margin": "sampled", "train_size": 10}


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / f"{MODULE}.py").write_text(PLUGIN, encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv(verifiers.PLUGINS_ENV, MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module(MODULE)
    yield VERIFIER
    verifiers._REGISTRY.pop(VERIFIER, None)
    sys.modules.pop(MODULE, None)


def test_reference_rules_in_a_rollout(plugin, tiny_llama, tmp_path):  # noqa: F811
    from marginlens.core.scoring.logprobs import ImplicitScorer
    from marginlens.core.scoring.models import load_causal_lm
    from marginlens.core.selection.margins import simpo_margin

    rows = [{"id": f"s{i}", "prompt": f"What is {i} plus {i + 2}?" + (" [tie]" if i == 2 else ""),
             "parent": None, "strategy": None, "iteration": 0, "root": f"s{i}"} for i in range(6)]
    pool = tmp_path / "pool.jsonl"
    write_pool(pool, rows)
    ws = Workspace(tmp_path / "ws")
    # Sample first (with the system prompt, as the rollout will), then blank one stored answer of s4: the job
    # reads the stored samples, so it meets an empty answer exactly there.
    made = generate_responses(ws, str(tiny_llama), pool, PARAMS, device="cpu", system_prompt=SYSTEM_PROMPT)
    (store,) = (ws.root / "generations").glob("*/responses.jsonl")
    records = [json.loads(line) for line in store.read_text().splitlines()]
    for record in records:
        if record["id"] == "s4":
            record["responses"][1], record["new_tokens"][1] = "", 0
    store.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    made = {r["id"]: r["responses"] for r in records}

    job = submit_rollout(ws, str(tiny_llama), pool, parse_eval(f"verifier:{plugin}"), params=PARAMS, device="cpu",
                         backend="transformers", rules=RULES, system_prompt=SYSTEM_PROMPT)
    assert job.wait(poll=0.2, timeout=300).state is JobState.DONE, job.log_tail(40)
    assert "generating" not in job.log_path.read_text()  # the stored samples (system-prompt key) were used
    pairs = {p["id"]: p for p in map(json.loads, pairs_path(job).read_text().splitlines())}
    unpaired = [json.loads(line) for line in (job.results_dir / "unpaired.jsonl").read_text().splitlines()]
    assert [(u["id"], u["reason"]) for u in unpaired] == [("s4", "empty")]  # dropped with all its answers
    assert set(pairs) == {"s0", "s1", "s2", "s3", "s5"}
    tie = pairs["s2"]  # every reward 0.5: kept, the last answer over the first, margin 0
    assert tie["rewards"] == [0.5] * 4 and tie["m_ex"] == 0
    assert (tie["chosen"], tie["rejected"]) == (made["s2"][3], made["s2"][0])
    for pair in pairs.values():
        rewards = pair["rewards"]
        best = len(rewards) - 1 - rewards[::-1].index(max(rewards))
        worst = rewards.index(min(rewards))
        assert (pair["chosen"], pair["rejected"]) == (made[pair["id"]][best], made[pair["id"]][worst])
    assert rollout_summary(job)["empty"] == 1 and rollout_summary(job)["margin"] == "policy"
    # no vLLM here: the margin is the policy's, scored with the system turn the answers were sampled under
    model, tokenizer, _ = load_causal_lm(str(tiny_llama), device="cpu", dtype="float32")
    scorer = ImplicitScorer(model, tokenizer)
    for pair in pairs.values():
        (own,) = scorer.score([user_messages(pair, SYSTEM_PROMPT)], [pair["chosen"]], [pair["rejected"]])
        expected = float(simpo_margin(own.chosen_logp, own.chosen_ntok, own.rejected_logp, own.rejected_ntok))
        assert pair["m_im"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
