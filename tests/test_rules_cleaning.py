"""Multi-signal cleaning (clean, clean_flip) on six pairs worked by hand: the judge's signal read from a real
verdict store, the three votes, removal through select() and the CLI, the flip arm's swapped records as the lab
writes them (core.training.train_data.write_flipped), and the audit's subsets (docs/RULES.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_data import make_dataset, save_logprobs
from marginlens.core.audit.subsets import build_subsets
from marginlens.core.cli import main
from marginlens.core.selection.export import export_selection
from marginlens.core.selection.judge_signal import rejected_both_orders
from marginlens.core.selection.margins import load_margins
from marginlens.core.selection.select import SelectionSpec, select
from marginlens.core.selection.signal_cleaning import flip_mask
from marginlens.core.training.train_data import write_flipped

# Six pairs and the three signals (a pair is flagged when at least 2 agree):
#   pair              0     1     2     3     4     5
#   m_ex              2    -1    -2     1  -0.5     3     reward: m_ex < 0 on 1, 2, 4
#   m_im              1    -1    -2    -2     2     2     mean 0, squares 1 1 4 4 4 4: std sqrt(3) = 1.732
#                                                         implicit: m_im <= -1.732 on 2, 3
#   judge (AB, BA)  r,c   r,r   r,r   r,r   r,-   r,r     judge: rejected in both valid orders on 1, 2, 3, 5
#   votes             0     2     3     2     1     1     flagged: 1, 2, 3; kept: 0, 4, 5
M_EX = [2.0, -1.0, -2.0, 1.0, -0.5, 3.0]
M_IM = [1.0, -1.0, -2.0, -2.0, 2.0, 2.0]
JUDGE = [("rejected", "chosen"), ("rejected", "rejected"), ("rejected", "rejected"), ("rejected", "rejected"),
         ("rejected", None), ("rejected", "rejected")]  # None: an answer the judge gave off-format


def verdict(pair_id: str, order: str, prefers: str | None) -> dict:
    return {"pair_id": pair_id, "judge_model": "judge-1", "prompt_version": "v1", "order": order,
            "prefers": prefers, "valid": prefers is not None}


@pytest.fixture
def six(ws, tmp_path):
    make_dataset(ws, "six", [{"prompt": f"Question {i}?", "chosen": f"good {i}", "rejected": f"bad {i}",
                              "score_chosen": 5.0 + m, "score_rejected": 5.0} for i, m in enumerate(M_EX)], tmp_path)
    ids = list(ws.load_pairs("six")["pair_id"])
    ones = np.ones(6)
    save_logprobs(ws, "six", "pol", ids, np.array(M_IM) - 10.0, ones, np.full(6, -10.0), ones)
    store = ws.audits_dir / "six" / "verdicts.jsonl"
    store.parent.mkdir(parents=True)
    lines = [verdict(pid, order, prefers) for pid, answers in zip(ids, JUDGE, strict=True)
             for order, prefers in zip(("AB", "BA"), answers, strict=True)]
    store.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return ws


def test_the_judge_votes_only_when_both_orders_prefer_the_rejected_answer(six):
    frame = load_margins(six, "six", policy_fp="pol")
    assert frame["judge_rejected"].tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    # two judge models' halves do not make one pair-level answer
    records = [verdict("p", "AB", "rejected"), {**verdict("p", "BA", "rejected"), "judge_model": "judge-2"}]
    assert rejected_both_orders(records) == set()
    assert rejected_both_orders([verdict("q", "AB", "rejected"), verdict("q", "BA", "rejected")]) == {"q"}
    # pair 0's BA answer asked again (a re-ask round) now prefers the rejected answer too: it replaces the first
    store = six.audits_dir / "six" / "verdicts.jsonl"
    pair0 = frame["pair_id"][0]
    with store.open("a") as fh:
        fh.write(json.dumps({**verdict(pair0, "BA", "rejected"), "reask": 1}) + "\n")
    assert load_margins(six, "six", policy_fp="pol")["judge_rejected"].tolist()[:2] == [1.0, 1.0]
    # no verdict file at all: nobody voted
    store.unlink()
    assert load_margins(six, "six", policy_fp="pol")["judge_rejected"].tolist() == [0.0] * 6


def test_clean_removes_the_pairs_two_signals_flag(six):
    frame = load_margins(six, "six", policy_fp="pol")
    half = select(frame, SelectionSpec(metric="clean", ratio=0.5))  # k = 3: exactly the three kept pairs
    assert sorted(half.positions.tolist()) == [0, 4, 5]
    assert ("noise signals over 6 candidates: m_ex < 0 on 3, judge against the label on 4, m_im <= -1.73 on 2; "
            "3 flagged by at least 2") in half.warnings
    everything = select(frame, SelectionSpec(metric="clean", ratio=1.0, seed=7))
    order = [int(i) for i in np.random.RandomState(7).permutation(6) if i in (0, 4, 5)]  # the seeded order
    assert everything.positions.tolist() == order
    assert any(w.startswith("only 3 of 6 candidate pairs pass the 'clean' rule (fewer than 2 of: m_ex < 0")
               for w in everything.warnings)


def test_clean_flip_selects_what_random_selects_and_marks_the_flagged(six):
    frame = load_margins(six, "six", policy_fp="pol")
    for seed in (42, 3):
        flip = select(frame, SelectionSpec(metric="clean_flip", ratio=0.5, seed=seed))
        assert flip.positions.tolist() == select(frame, SelectionSpec(metric="random", ratio=0.5,
                                                                       seed=seed)).positions.tolist()
        mask = flip_mask(frame, flip)
        assert mask.tolist() == [p in (1, 2, 3) for p in flip.in_source_order()]
    assert flip_mask(frame, select(frame, SelectionSpec(metric="clean", ratio=1.0))) is None  # remove: no swap


def test_flip_arm_training_data(six, tmp_path):
    frame = load_margins(six, "six", policy_fp="pol")
    selection = select(frame, SelectionSpec(metric="clean_flip", ratio=1.0))
    staged = six.root / "exports" / "cell" / "selected.jsonl"
    export_selection(six, "six", selection, frame, staged, "jsonl", apply_flags=False)
    train = staged.with_name("train.jsonl")
    assert write_flipped(staged, train, flip_mask(frame, selection)) == 3
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    assert [(r["chosen"], r["rejected"]) for r in rows] == [
        ("good 0", "bad 0"), ("bad 1", "good 1"), ("bad 2", "good 2"), ("bad 3", "good 3"),
        ("good 4", "bad 4"), ("good 5", "bad 5")]
    assert rows[1]["score_chosen"] == 5.0 and rows[1]["score_rejected"] == 4.0  # the scores travel with the texts
    manifest = json.loads(train.with_name("train.jsonl.manifest.json").read_text())
    assert manifest["flipped"]["pairs"] == 3 and manifest["selection"]["metric"] == "clean_flip"
    assert manifest["output"]["path"] == str(train)
    with pytest.raises(Exception, match=r"selected.jsonl: 6 records but 2 flip marks"):
        write_flipped(staged, tmp_path / "x.jsonl", [True, False])


def test_select_cli_and_audit_subsets(six, capsys):
    root = ["--workspace", str(six.root), "--policy", "pol"]
    assert main(["select", "six", "--metric", "clean", "--ratio", "1.0", "--out", "c.jsonl", *root]) == 0
    rows = [json.loads(line) for line in (six.root / "exports" / "c.jsonl").read_text().splitlines()]
    assert [r["chosen"] for r in rows] == ["good 0", "good 4", "good 5"]
    assert "3 flagged by at least 2" in capsys.readouterr().out
    subsets = build_subsets(six, "six", metrics=["clean", "clean_flip"], ratio=0.5, policy_fp="pol")
    ids = list(six.load_pairs("six")["pair_id"])
    assert sorted(subsets["clean"]) == sorted(ids[i] for i in (0, 4, 5)) and len(subsets["clean_flip"]) == 3
