"""Audit statistics on a case computed by hand, the verdict store's exactly-once rule, sampling, flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_data import make_dataset, standard_records
from marginlens.core.audit.agreement import cohen_kappa, wilson_interval
from marginlens.core.audit.agreement_chart import agreement_figure, chart_frame
from marginlens.core.audit.audit_job import verdict_record
from marginlens.core.audit.audit_params import AuditParams, audit_params
from marginlens.core.audit.audit_report import audit_report
from marginlens.core.audit.judge_prompt import PROMPT_VERSION, template_text
from marginlens.core.audit.subsets import sample_subsets
from marginlens.core.chat_client import Completion, Endpoint
from marginlens.core.data.flags import flag_pairs, flags_summary, load_flags, unflag_pairs
from marginlens.core.errors import MarginLensError
from marginlens.core.verdicts import VerdictStore, verdicts_path
from scipy.stats import binomtest

ENDPOINT = Endpoint("judge-h", "http://127.0.0.1:1/v1")


def answer(text: str | None, malformed: bool = False) -> Completion:
    return Completion(text, text or "{broken", 10, 2, 1, malformed=malformed)


# (pair, order) -> the judge's raw answer. AB shows chosen as A, BA shows chosen as B.
HAND_CASE = {
    ("p1", "AB"): "A", ("p1", "BA"): "B",            # prefers chosen both times: agrees
    ("p2", "AB"): "A", ("p2", "BA"): "A",            # always A: inconsistent (position bias)
    ("p3", "AB"): '{"winner": "B", "rationale": "r3"}', ("p3", "BA"): "A",  # prefers rejected: disagrees
    ("p4", "AB"): "A", ("p4", "BA"): "no idea",      # one invalid answer: pair not valid
    ("p5", "AB"): "[[A]]", ("p5", "BA"): "B",        # agrees
}


def test_statistics_match_a_hand_computed_case(ws):
    store = VerdictStore.for_dataset(ws, "hand")
    for (pid, order), text in HAND_CASE.items():
        assert store.append(verdict_record(pid, order, answer(text), ENDPOINT, PROMPT_VERSION, None))
    params = AuditParams.from_dict({"dataset": "hand", "samples": {"subset": ["p1", "p2", "p3", "p4", "p5", "p6"]},
                                    "endpoint": {"model": "judge-h"}, "prompt_version": PROMPT_VERSION})
    s = audit_report(ws, params)["subsets"]["subset"]
    # By hand: p6 is pending; valid pairs p1,p2,p3,p5; decisive (consistent) p1,p3,p5; agree p1,p5.
    assert (s["n"], s["judged"], s["pending"], s["valid_pairs"], s["decisive"], s["agree"]) == (6, 5, 1, 4, 3, 2)
    assert s["agreement"] == pytest.approx(2 / 3)
    assert s["position_consistency"] == pytest.approx(3 / 4)
    assert (s["invalid"], s["invalid_pairs"]) == (1, 1)
    # Wilson 95% for 2/3: centre (p + z^2/2n)/(1 + z^2/n) = 0.57308, half-width 0.36542.
    assert s["ci_low"] == pytest.approx(0.20766, abs=1e-4) and s["ci_high"] == pytest.approx(0.93850, abs=1e-4)
    ci = binomtest(2, 3).proportion_ci(method="wilson")
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((ci.low, ci.high))
    # Kappa over the 9 valid single judgments, label position vs judge answer:
    # label A,B,A,B,A,B,A,A,B; judge A,B,A,A,B,A,A,A,B; p_o = 6/9, p_e = 5/9*6/9 + 4/9*3/9 = 14/27.
    assert s["kappa"] == pytest.approx(4 / 13)

    frame = chart_frame(audit_report(ws, params))
    assert frame.loc[0, "agreement"] == pytest.approx(2 / 3)
    bar = agreement_figure(audit_report(ws, params)).data[0]
    assert bar.y[0] == pytest.approx(200 / 3)
    assert bar.error_y.array[0] == pytest.approx(93.850 - 200 / 3, abs=0.01)
    assert bar.error_y.arrayminus[0] == pytest.approx(200 / 3 - 20.766, abs=0.01)


def test_records_keep_prompt_answer_and_invalid_raw(ws):
    record = verdict_record("p", "BA", answer("Both are fine."), ENDPOINT, PROMPT_VERSION, "job-1")
    assert record["prompt_text"] == template_text() and record["prompt_version"] == PROMPT_VERSION
    assert not record["valid"] and record["choice"] is None and record["prefers"] is None
    assert record["raw"] == "Both are fine." and record["invalid_reason"]
    broken = verdict_record("p", "AB", answer(None, malformed=True), ENDPOINT, PROMPT_VERSION, None)
    assert not broken["valid"] and broken["raw"] == "{broken" and "malformed" in broken["invalid_reason"]
    good = verdict_record("p", "BA", answer('{"winner": "B", "rationale": "kind"}'), ENDPOINT, PROMPT_VERSION, None)
    assert good["prefers"] == "chosen" and good["rationale"] == "kind"


def test_wilson_and_kappa_edges():
    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(10, 10)
    assert high == pytest.approx(1.0) and low == pytest.approx(binomtest(10, 10).proportion_ci(method="wilson").low)
    assert cohen_kappa([], []) is None
    assert cohen_kappa(["A", "A"], ["A", "A"]) is None  # chance agreement is 1: undefined
    assert cohen_kappa(["A", "B", "A", "B"], ["A", "B", "A", "B"]) == 1.0
    assert cohen_kappa(["A", "B", "A", "B"], ["B", "A", "B", "A"]) == -1.0


APPEND_MANY = """
import sys
from marginlens.core.verdicts import VerdictStore
store = VerdictStore(sys.argv[1])
written = 0
for i in range(30):
    record = {"pair_id": f"p{i}", "judge_model": "m", "prompt_version": "v", "order": "AB", "by": sys.argv[2]}
    written += store.append(record)
print(written)
"""


def test_store_writes_each_key_once_across_processes(tmp_path):
    # Plain subprocesses, not a multiprocessing "spawn" pool: spawn re-imports sys.modules["__main__"],
    # which an earlier AppTest in the same session may have replaced with a page script.
    path = str(tmp_path / "verdicts.jsonl")
    procs = [subprocess.Popen([sys.executable, "-c", APPEND_MANY, path, str(w)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1]) for w in range(3)]
    written = [int(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(written) == 30
    lines = [json.loads(line) for line in open(path)]
    assert len(lines) == 30 and len({r["pair_id"] for r in lines}) == 30


def test_store_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "verdicts.jsonl"
    first = {"pair_id": "a", "judge_model": "m", "prompt_version": "v", "order": "AB"}
    path.write_text(json.dumps(first) + "\n" + '{"pair_id": "b", "judge_mod')  # crash mid-write
    store = VerdictStore(path)
    assert len(store.records()) == 1
    assert store.append({**first, "pair_id": "b"})
    assert not store.append({**first, "pair_id": "b", "other": 1})  # exactly once
    fresh = VerdictStore(path)
    assert sorted(r["pair_id"] for r in fresh.records()) == ["a", "b"]
    assert path.read_text().endswith("\n")


def test_sampling_is_seeded_per_subset():
    subsets = {"map": [f"m{i}" for i in range(100)], "random": [f"r{i}" for i in range(100)], "tiny": ["t"]}
    a = sample_subsets(subsets, 5, seed=7)
    assert a == sample_subsets(subsets, 5, seed=7)
    assert a != sample_subsets(subsets, 5, seed=8)
    assert a["map"] == sample_subsets({"map": subsets["map"]}, 5, seed=7)["map"]
    assert len(set(a["map"])) == 5 and a["tiny"] == ["t"]
    with pytest.raises(MarginLensError):
        sample_subsets(subsets, 0)


def test_flags_are_stored_atomically_and_validated(ws, tmp_path):
    make_dataset(ws, "flagged", standard_records(4), tmp_path)
    ids = list(ws.load_pairs("flagged")["pair_id"])
    assert load_flags(ws, "flagged") == {}
    with pytest.raises(MarginLensError, match="OPENAI_API_KEY"):  # a key in the URL would land in spec.json
        audit_params("flagged", {"random": ids}, Endpoint("m", "http://127.0.0.1:1/v1?api_key=sk-123456"))
    assert flag_pairs(ws, "flagged", ids[:2]) == 2
    assert flag_pairs(ws, "flagged", [ids[1]], action="swap", reason="judge prefers rejected") == 1
    flags = load_flags(ws, "flagged")
    assert flags[ids[0]]["action"] == "exclude" and flags[ids[1]]["action"] == "swap"
    assert flags_summary(ws, "flagged") == {"flags_file": "audits/flagged/flags.json",
                                            "excluded": [ids[0]], "swapped": [ids[1]]}
    with pytest.raises(MarginLensError, match="no pair"):
        flag_pairs(ws, "flagged", ["not-a-pair"])
    with pytest.raises(MarginLensError, match="action"):
        flag_pairs(ws, "flagged", ids[:1], action="delete")
    assert unflag_pairs(ws, "flagged", [ids[0]]) == 1
    assert list(load_flags(ws, "flagged")) == [ids[1]]
    assert unflag_pairs(ws, "flagged") == 1 and load_flags(ws, "flagged") == {}
    assert not [p for p in os.listdir(verdicts_path(ws, "flagged").parent) if p.endswith(".tmp")]


def test_audit_params_keep_the_stored_spec_and_the_job_id():
    """spec.json "params" and the job id are what earlier versions wrote for the same settings, so an
    existing workspace's audit resumes as the same job; a stored spec reads back to the same params."""
    from marginlens.core.jobs import job_id_for

    endpoint = Endpoint("judge", "http://127.0.0.1:1/v1", timeout=5.0, max_output_tokens=32)
    params = audit_params("ds", {"random": ["b", "a"], "map": ["x", "y", "z"]}, endpoint)
    stored = params.to_dict()
    assert stored == {
        "dataset": "ds", "samples": {"random": ["b", "a"], "map": ["x", "y", "z"]},
        "endpoint": {"model": "judge", "base_url": "http://127.0.0.1:1/v1", "timeout": 5.0, "max_output_tokens": 32,
                     "temperature": 0.0},
        "max_calls": None, "max_tokens": None, "concurrency": 4,
        "retry": {"max_attempts": 6, "base_delay": 1.0, "max_delay": 60.0, "max_retry_after": 300.0},
        "prompt_version": PROMPT_VERSION,
    }
    assert job_id_for("audit", stored) == "audit-69a17ef2d122bca7"  # computed by the dict-based audit_params
    again = AuditParams.from_dict(json.loads(json.dumps(stored)))
    assert again == params and again.to_dict() == stored
    assert params.pair_ids == ["b", "a", "x", "y", "z"]


def test_kappa_over_both_orders_is_twice_the_agreement_minus_one_whatever_the_position_bias():
    import random

    from marginlens.core.audit import agreement

    rng = random.Random(7)
    positions = ["A", "B"] * 200  # each pair judged in both orders: the label sits in A and in B equally often
    for bias in (0.5, 0.8, 0.95):  # how often the judge answers A when unsure
        answers = [p if rng.random() < 0.6 else ("A" if rng.random() < bias else "B") for p in positions]
        observed = sum(a == p for a, p in zip(answers, positions, strict=True)) / len(positions)
        assert cohen_kappa(positions, answers) == pytest.approx(2 * observed - 1)
    assert "2 x (share of single judgments naming" in agreement.__doc__  # what the statistic is, documented
    assert "includes the judge's position bias" not in agreement.__doc__
