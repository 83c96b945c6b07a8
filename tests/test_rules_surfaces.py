"""The rules published since the paper are offered wherever a metric is chosen, because every surface reads the
registry: Explore's metric choice and the Experiments page's arms (AppTest), the audit CLI's --subsets, and the
lab itself, where the cleaning rule's flip arm trains on its flagged pairs with chosen and rejected exchanged
(a real experiment job on a tiny Llama, one step)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_app import app_test, build_workspace, metrics, no_errors
from helpers_data import make_dataset, save_logprobs
from helpers_experiment import (
    DATASET,
    VERIFIER,
    build_dataset,
    register_test_verifier,
    unregister_test_verifier,
)
from marginlens.core.cli import main
from marginlens.core.errors import MarginLensError
from marginlens.core.experiments.experiment_job import experiment_state, submit_experiment
from marginlens.core.experiments.experiment_plan import prepare
from marginlens.core.experiments.experiment_results import cell_key
from marginlens.core.experiments.experiment_spec import build_spec
from marginlens.core.job_status import JobState
from marginlens.core.selection.metrics import get_metric
from tiny_models import single_thread, tiny_llama  # noqa: F401  (session fixture)

EVAL = f"verifier:{VERIFIER},max_new_tokens=4"
NEW = ["bees", "chosen_reward", "selective_dpo", "clean", "clean_flip"]


def test_explore_offers_and_runs_each_new_rule(tmp_path):
    ws = build_workspace(tmp_path / "workspace", n=30)
    at = app_test("explore_page.py", ws)
    at.run()
    assert {get_metric(name).label for name in NEW} <= set(at.selectbox(key="_ctl_metric").options)  # shown by label
    for name in NEW:
        at.selectbox(key="_ctl_metric").set_value(name).run()
        no_errors(at)
        # 31 candidates (30 pairs and the adversarial one), ratio 0.4: k = 12, or fewer where a rule removes pairs
        assert 0 < int(metrics(at)["Selected (top-k)"]) <= 12, name


def test_the_lab_offers_each_new_rule_as_an_arm(tmp_path):
    at = app_test("experiments_page.py", build_dataset(tmp_path / "workspace"))
    at.run()
    assert set(NEW) <= set(at.multiselect(key="_exp_metrics").options)


def test_audit_cli_subsets_take_the_new_rules(ws, tmp_path, capsys):
    make_dataset(ws, "four", [{"prompt": f"Q{i}?", "chosen": f"c{i}", "rejected": f"r{i}", "score_chosen": float(i),
                               "score_rejected": 1.0} for i in range(4)], tmp_path)
    ids = list(ws.load_pairs("four")["pair_id"])
    ones = np.ones(4)
    save_logprobs(ws, "four", "pol", ids, [-1.0, -2, -3, -4], ones, [-2.0, -2, -2, -2], ones)
    assert main(["audit", "four", "--judge-model", "j", "--subsets", "selective_dpo,clean", "--ratio", "0.5",
                 "--estimate", "--workspace", str(ws.root), "--policy", "pol"]) == 0
    # m_ex = [-1, 0, 1, 2], m_im = [1, 0, -1, -2] (mean -0.5, std sqrt(1.25) = 1.12). selective_dpo, k = 2: the
    # largest m_im, pairs 0 and 1. clean: pair 0 has one vote (m_ex < 0), pair 3 one (m_im <= -1.12), none two:
    # all four pass, and k = 2 of them in the random baseline's order (seed 42). Two judge calls per distinct pair.
    sample = {int(i) for i in np.random.RandomState(42).permutation(4)[:2]}
    out = capsys.readouterr().out
    assert f"estimate: {2 * len({0, 1} | sample)} calls" in out, out
    assert main(["audit", "four", "--judge-model", "j", "--subsets", "nope", "--estimate",
                 "--workspace", str(ws.root), "--policy", "pol"]) != 0


@pytest.fixture
def lab_folder(tmp_path):
    register_test_verifier(tmp_path / "plugin")
    yield tmp_path
    unregister_test_verifier(tmp_path / "plugin")


def test_flip_arm_trains_the_flagged_pairs_swapped(lab_folder, tiny_llama):  # noqa: F811
    single_thread()
    ws = build_dataset(lab_folder / "workspace", policy=str(tiny_llama))
    # helpers_experiment.arithmetic_records: m_ex = (1 + 7i mod 5) - (3i mod 4) < 0 for pairs 5, 10 and 13 only;
    # a judge against the label on exactly those gives each 2 votes, and no other pair reaches 2
    pairs = ws.load_pairs(DATASET)
    against = [pid for pid, r in zip(pairs["pair_id"], pairs["rejected"], strict=True)
               if r.endswith((", or 5.", ", or 10.", ", or 13."))]
    assert len(against) == 3
    store = ws.audits_dir / DATASET / "verdicts.jsonl"
    store.parent.mkdir(parents=True)
    store.write_text("".join(json.dumps({"pair_id": pid, "judge_model": "j", "prompt_version": "v", "order": order,
                                         "prefers": "rejected", "valid": True}) + "\n"
                             for pid in against for order in ("AB", "BA")))
    fast = {"learning_rate": 1e-3, "lr_scheduler_type": "constant", "warmup_steps": 0, "per_device_train_batch_size": 4,
            "effective_batch_size": 4, "max_length": 64, "max_steps": 1, "save_steps": 100}
    spec = build_spec(ws, DATASET, metrics=["clean_flip"], ratio=1.0, method="simpo", seeds=1,
                      eval=EVAL, policy=str(tiny_llama), overrides=fast,
                      device="cpu")
    job = submit_experiment(ws, spec)
    assert job.wait(poll=0.3, timeout=400).state is JobState.DONE, job.log_tail(40)
    cell = experiment_state(job)["cells"][cell_key("clean_flip", 42)]
    train = job.dir / "results" / "cells" / "clean_flip-s42" / "train.jsonl"
    assert cell["export"] == str(train)
    selected = [json.loads(line) for line in train.with_name("selected.jsonl").read_text().splitlines()]
    trained = [json.loads(line) for line in train.read_text().splitlines()]
    assert len(trained) == len(selected) == cell["pairs"]
    flagged = [i for i, r in enumerate(selected) if r["rejected"].endswith((", or 5.", ", or 10.", ", or 13."))]
    assert flagged  # at least one of the three is not a held-out prompt
    for i, (before, after) in enumerate(zip(selected, trained, strict=True)):
        expect = (before["rejected"], before["chosen"]) if i in flagged else (before["chosen"], before["rejected"])
        assert (after["chosen"], after["rejected"]) == expect
    manifest = json.loads(train.with_name("train.jsonl.manifest.json").read_text())
    assert manifest["flipped"]["pairs"] == len(flagged)
    # the verdicts are part of what this experiment selected from: a later audit makes it another experiment
    plain = build_spec(ws, DATASET, metrics=["random"], ratio=1.0, seeds=1, eval=EVAL, policy=str(tiny_llama),
                       overrides=fast)
    assert spec.verdicts and plain.verdicts is None and "verdicts" not in plain.to_params()  # ids kept as before
    with store.open("a") as fh:
        fh.write(json.dumps({"pair_id": against[0], "judge_model": "k", "prompt_version": "v", "order": "AB",
                             "prefers": "chosen", "valid": True}) + "\n")
    with pytest.raises(MarginLensError, match=r"verdicts.jsonl changed since this experiment was planned"):
        prepare(ws, spec)
