"""The built-in demo: committed real data, installed in a second, labels that mean what they say."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from helpers_browser import free_port
from marginlens.core.demo.build import (
    DEMO_EVAL_FILE,
    DEMO_NAME,
    PAIRS_FILE,
    ensure_demo,
    flipped_in_selections,
)
from marginlens.core.demo.demo_tasks import TASK_MIX, demo_questions, question_key
from marginlens.core.experiments.eval_set import load_eval_set
from marginlens.core.experiments.verifiers import get_verifier
from marginlens.core.scoring.score_tables import load_score_table
from marginlens.core.selection.margins import default_scorers, load_margins
from tiny_models import smollm2  # noqa: F401  (session fixture)


def _pairs() -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(PAIRS_FILE.read_bytes()).splitlines()]


def test_demo_labels_mean_what_they_say():
    rows = _pairs()
    assert 250 <= len(rows) <= 400 and {r["task"] for r in rows} == {task for task, _, _ in TASK_MIX}
    verifier = get_verifier("answer-match")
    for row in rows:
        chosen, rejected = row["chosen"][-1]["content"], row["rejected"][-1]["content"]
        # the committed scores are the verifier's, and they travel with the responses when a label is flipped
        assert row["score_chosen"] == verifier.score(chosen, row) and row["score_rejected"] == verifier.score(rejected, row)
        assert row["chosen_correct"] == (row["score_chosen"] == 1.0) != row["rejected_correct"]
        assert row["label_flipped"] == (not row["chosen_correct"]) == (row["score_chosen"] < row["score_rejected"])
    # length is no proxy for the label
    shorter = np.mean([len(r["chosen"][-1]["content"]) < len(r["rejected"][-1]["content"]) for r in rows])
    assert 0.35 <= shorter <= 0.65
    assert 0.08 <= np.mean([r["label_flipped"] for r in rows]) <= 0.16
    # partial credit spreads the explicit margin beyond {+1, -1}
    assert len({round(r["score_chosen"] - r["score_rejected"], 4) for r in rows}) > 10


def test_the_held_out_eval_set_shares_no_question_with_the_pairs():
    held_out = load_eval_set(DEMO_EVAL_FILE)
    # the committed file is what the question split gives now: the pair pool's twins dropped, nothing redrawn
    train, expected = demo_questions(0)
    assert [(r["id"], r["prompt"], r["answer"]) for r in held_out] == [(r["id"], r["prompt"], r["answer"]) for r in expected]
    assert len(held_out) < sum(n for _, _, n in TASK_MIX)
    # no question of the pairs' pool (every question sampled for pairs, kept or not), up to commutativity
    assert not {question_key(r["prompt"]) for r in held_out} & {question_key(q["prompt"]) for q in train}
    assert {question_key(r["prompt"]) for r in _pairs()} <= {question_key(q["prompt"]) for q in train}
    assert {r["task"] for r in held_out} == {task for task, _, _ in TASK_MIX}
    verifier = get_verifier("answer-match")
    assert all(verifier.score(f"The answer is {r['answer']}.", r) == 1.0 for r in held_out)


def test_demo_installs_once_and_its_noise_is_findable(ws):
    n = len(_pairs())
    first = ensure_demo(ws)
    assert f"imported {n} of {n} rows as ultrafeedback-binarized" in first and "1 score tables installed" in first
    assert "no-op" in ensure_demo(ws)
    assert PAIRS_FILE.stat().st_size < 5_000_000
    margins = load_margins(ws, DEMO_NAME, policy_fp=default_scorers(ws, DEMO_NAME)["policy"])
    assert margins["m_im"].notna().all() and margins.attrs["m_ex_source"]
    flipped = {row["pair_id"] for row in ws.load_pairs(DEMO_NAME)
               if json.loads(row["source_json"])["label_flipped"]}
    is_flipped = margins["pair_id"].isin(flipped).to_numpy()
    # The verifier knows every flipped label (its explicit margin is negative), so a selection by the
    # explicit margin keeps none of them; the implicit margin, the policy's own preference, does not.
    assert (margins["m_ex"][is_flipped] < 0).all() and (margins["m_ex"][~is_flipped] > 0).all()
    found = flipped_in_selections(ws)
    assert found["explicit"][0] == 0
    assert found["map"][0] == 0  # M_AP adds -|m_im| to the same explicit term, which dominates here
    # The policy's own preference, the signed implicit margin, leans to the correct answer (on average, not
    # pair by pair), so flipped pairs lean negative; the implicit metric ranks by |m_im| and keeps some.
    assert margins["m_im"][is_flipped].mean() < 0 < margins["m_im"][~is_flipped].mean()
    assert found["implicit"][0] > 0


def test_committed_scores_are_what_the_real_scorer_computes_now(ws, smollm2):  # noqa: F811
    from marginlens.core.scoring.logprobs import ImplicitScorer
    from marginlens.core.scoring.models import load_causal_lm
    from marginlens.core.scoring.score_spec import ScoreSpec
    from marginlens.core.scoring.score_submit import submit_scoring

    ensure_demo(ws)
    handle = submit_scoring(ws, ScoreSpec(dataset=DEMO_NAME, device="cpu"))
    assert handle.job is None and handle.cached == ["policy"]  # the committed table is current: no rescoring
    table = load_score_table(ws, DEMO_NAME, handle.fingerprints["policy"]).to_pandas().set_index("pair_id")
    n = len(ws.load_pairs(DEMO_NAME))
    pairs = ws.load_pairs(DEMO_NAME).select(range(0, n, n // 4))
    model, tokenizer, _ = load_causal_lm(str(smollm2), device="cpu")
    results = ImplicitScorer(model, tokenizer).score(pairs["prompt"], pairs["chosen"], pairs["rejected"])
    for pid, result in zip(pairs["pair_id"], results, strict=True):
        row = table.loc[pid]
        assert (result.chosen_ntok, result.rejected_ntok) == (row.chosen_ntok, row.rejected_ntok)
        np.testing.assert_allclose([result.chosen_logp, result.rejected_logp], [row.chosen_logp, row.rejected_logp],
                                   rtol=1e-4, atol=1e-3)


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (kernel hex) of the sockets listening on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_marginlens_app_serves_the_demo_on_localhost(tmp_path):
    port = free_port()
    marginlens = Path(sys.executable).parent / "marginlens"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([str(marginlens), "app", "--demo", "--port", str(port), "--workspace", str(tmp_path / "ws")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
                    assert response.read() == b"ok"
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "the dashboard did not come up in 90 s"
                time.sleep(0.5)
        assert (tmp_path / "ws" / "datasets" / DEMO_NAME / "manifest.json").exists()
        assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only: not 0.0.0.0, not ::
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_stopping_marginlens_app_stops_the_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "marginlens"), "app", "--port", str(port),
                             "--workspace", str(tmp_path / "ws")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 90
    while not _listening_addresses(port):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.3)
    proc.terminate()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while _listening_addresses(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _listening_addresses(port), "a server outlived `marginlens app`"
