"""`compare` and `select` on a dataset that lacks a margin say what is missing, on how many pairs, and the exact
command that scores it on the same seeded sample: the command from the message is run (against the scripted
rating server) and then `compare` works."""

from __future__ import annotations

import re
import shlex

import numpy as np
import pytest
from helpers_data import hh_records, make_dataset, save_logprobs, save_rewards
from judge_server import ScriptedJudge
from marginlens.core.cli import main
from marginlens.core.data.pair_sample import sample_positions
from marginlens.core.errors import MarginLensError
from marginlens.core.selection.compare import compare_metrics
from marginlens.core.selection.margins import default_margins
from marginlens.core.selection.select import SelectionSpec, select

N, SAMPLE = 30, 10
RATING_FILL = re.compile(r"`(marginlens score hh --llm-rating MODEL[^`]*)`")


@pytest.fixture
def hh(ws, tmp_path):
    make_dataset(ws, "hh", hh_records(N), tmp_path)
    return ws


def pair_ids(ws) -> list[str]:
    return list(ws.load_pairs("hh")["pair_id"])


def logprobs_on(ws, positions: np.ndarray) -> None:
    ids = pair_ids(ws)
    rng = np.random.default_rng(0)
    n = len(positions)
    save_logprobs(ws, "hh", "pol", [ids[i] for i in positions], -rng.uniform(1, 60, n), rng.integers(1, 30, n),
                  -rng.uniform(1, 60, n), rng.integers(1, 30, n))


def rewards_on(ws, positions: np.ndarray) -> None:
    ids = pair_ids(ws)
    rng = np.random.default_rng(1)
    save_rewards(ws, "hh", "rm", [ids[i] for i in positions], rng.uniform(1, 10, len(positions)),
                 rng.uniform(1, 10, len(positions)))


def compare_error(ws) -> str:
    with pytest.raises(MarginLensError) as err:
        compare_metrics(default_margins(ws, "hh"))
    return str(err.value)


def test_no_explicit_margin_names_the_rating_command_for_the_same_sample_and_it_works(hh, capsys):
    logprobs_on(hh, sample_positions(pair_ids(hh), SAMPLE, 0))
    message = compare_error(hh)
    assert f"the explicit margin (m_ex) is on 0 of {N} pairs, the implicit one (m_im) on {SAMPLE}" in message
    fill = RATING_FILL.search(message).group(1)
    assert fill == f"marginlens score hh --llm-rating MODEL --policy none --sample {SAMPLE} --seed 0 --rating-url URL"
    assert "What runs now: `marginlens select hh --metric implicit --out hh-implicit.jsonl`" in message

    # the library's select and the CLI's compare and select say the same command
    with pytest.raises(MarginLensError, match=re.escape(fill)):
        select(default_margins(hh, "hh"), SelectionSpec(metric="map"))
    root = ["--workspace", str(hh.root)]
    assert main(["compare", "hh", *root]) != 0 and fill in capsys.readouterr().err
    assert main(["select", "hh", "--metric", "map", "--out", "x.jsonl", *root]) != 0
    assert fill in capsys.readouterr().err

    with ScriptedJudge(answer=lambda request: f"Rating: {1 + len(request.messages[-1]['content']) % 10}") as rater:
        argv = shlex.split(fill.replace("MODEL", "rater").replace("URL", rater.base_url))
        assert main([*argv[1:], *root]) == 0
    assert len(rater.requests) == 2 * SAMPLE  # the same pairs: nothing rated outside the sample
    report = compare_metrics(default_margins(hh, "hh"))
    assert report.n == SAMPLE


def test_no_implicit_margin_names_the_policy_command_for_the_rated_sample(hh):
    rewards_on(hh, sample_positions(pair_ids(hh), SAMPLE, 0))
    message = compare_error(hh)
    assert f"the explicit margin (m_ex) is on {SAMPLE} of {N} pairs, the implicit one (m_im) on 0" in message
    assert f"`marginlens score hh --sample {SAMPLE} --seed 0` computes it under the policy on the {SAMPLE} pairs" in message
    with pytest.raises(MarginLensError, match=re.escape(f"`marginlens score hh --sample {SAMPLE} --seed 0`")):
        select(default_margins(hh, "hh"), SelectionSpec(metric="implicit"))


def test_margins_on_different_pairs_say_so(hh):
    sampled = sample_positions(pair_ids(hh), SAMPLE, 0)
    logprobs_on(hh, sampled)
    rewards_on(hh, np.setdiff1d(np.arange(N), sampled)[:SAMPLE])  # not a seed-0 sample: the seed is unknown
    message = compare_error(hh)
    assert f"the explicit margin (m_ex) is on {SAMPLE} of {N} pairs, the implicit one (m_im) on {SAMPLE}" in message
    assert (f"They were scored on different pairs: `marginlens score hh --sample {SAMPLE} --seed SEED` scores the "
            "implicit margin on the explicit margin's pairs") in message


def test_a_whole_implicit_table_needs_no_sample(hh):
    logprobs_on(hh, np.arange(N))
    fill = RATING_FILL.search(compare_error(hh)).group(1)
    assert fill == "marginlens score hh --llm-rating MODEL --policy none --rating-url URL"
