"""No explicit margin at all (HH-RLHF carries no scores): core says which metrics can run and the one
sentence to show; `info`, `select`, `audit` and the Score and Audit pages say it once and offer what works."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_app import app_test, no_errors
from helpers_data import hh_records, make_dataset, random_logprobs, save_rewards, standard_records
from judge_server import ScriptedJudge
from marginlens.app.margin_hints import explicit_words
from marginlens.core.cli import main
from marginlens.core.selection.margin_sources import MarginSources, dataset_margin_sources, without_explicit
from marginlens.core.selection.metrics import Metric, metric_scores, register, unregister


@pytest.fixture
def hh(ws, tmp_path):
    make_dataset(ws, "hh", hh_records(20), tmp_path)
    return ws


def test_without_explicit_margin_only_implicit_and_random_run(hh, tmp_path):
    before = dataset_margin_sources(hh, "hh")  # nothing scored at all
    assert before.runnable == ("random",) and len(before.notes) == 2
    random_logprobs(hh, "hh")
    sources = dataset_margin_sources(hh, "hh")
    assert (sources.explicit, sources.implicit) == (False, True)
    assert sources.runnable == ("implicit", "random", "selective_dpo")  # the rules that read m_im alone
    assert "marginlens score hh --llm-rating MODEL" in sources.note and "ArmoRM-Llama3-8B-v0.1" in sources.note
    # the note names what runs as the registry says, not a fixed "implicit and random"
    assert "the implicit, random and selective_dpo metrics can" in sources.note
    assert sources.notes == [sources.note]

    make_dataset(hh, "scored", standard_records(5), tmp_path)  # scores of its own: nothing to say
    scored = dataset_margin_sources(hh, "scored")
    assert scored.explicit and scored.note is None and "explicit" in scored.runnable


def test_a_rule_needing_only_the_implicit_margin_is_named_in_every_note():
    class HalfImplicit(Metric):
        name = "half_implicit"
        needs = ("m_im",)
        description = "-z(|m_im|) / 2"

        def formula(self, x, p):
            return -x.z_implicit(False) / 2

    assert without_explicit() == ("implicit", "random", "selective_dpo")
    register(HalfImplicit)
    try:
        missing = MarginSources(explicit=False, implicit=True, runnable=())
        said = "the implicit, random, selective_dpo and half_implicit metrics can"
        assert said in missing.note and said in explicit_words(missing)
        empty = MarginSources(False, True, (), "hh", "llm_rating-x", (0, 40))
        assert said in empty.note and said in explicit_words(empty)
    finally:
        unregister(HalfImplicit.name)  # the registry is process-wide


def test_map_with_a_constant_explicit_margin_ranks_like_implicit():
    # What the note claims: z of a constant is 0, so M_AP's order is the implicit metric's.
    m_im = np.random.default_rng(3).normal(size=50)
    flat = metric_scores(np.full(50, 2.0), m_im, "map").scores
    implicit = metric_scores(None, m_im, "implicit").scores
    assert list(np.argsort(-flat, kind="stable")) == list(np.argsort(-implicit, kind="stable"))


def test_cli_says_it_once_and_offers_what_works(hh, capsys):
    random_logprobs(hh, "hh")
    root = ["--workspace", str(hh.root)]
    assert main(["info", "hh", *root]) == 0
    out = capsys.readouterr().out
    assert out.count("No explicit margin") == 1 and "metrics now:     implicit, random" in out

    assert main(["select", "hh", "--metric", "map", "--out", "x.jsonl", *root]) != 0
    err = capsys.readouterr().err
    assert "--metric map cannot run on 'hh'" in err and "Metrics that run now: implicit, random" in err
    assert main(["select", "hh", "--metric", "implicit", "--out", "x.jsonl", *root]) == 0

    with ScriptedJudge() as judge:
        assert main(["audit", "hh", "--judge-model", "j", "--base-url", judge.base_url, "--n", "2", "--estimate",
                     *root]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("No explicit margin") == 1
    assert "implicit" in captured.out and "map" not in captured.out.split("estimate")[0]


def test_score_and_audit_pages_say_it_once(hh):
    random_logprobs(hh, "hh")
    at = app_test("score_page.py", hh)
    at.run()
    no_errors(at)
    infos = [i.value for i in at.info]
    assert sum("No explicit margin" in v for v in infos) == 1
    assert any("ArmoRM-Llama3-8B-v0.1" in c.value and "--trust-remote-code" in c.value for c in at.caption)
    labels = [t.label for t in at.text_input]
    assert {"Base URL", "API key (optional)"} <= set(labels)  # the LLM-rating endpoint picker's own URL

    audit = app_test("audit_page.py", hh)
    audit.run()
    no_errors(audit)
    assert sum("No explicit margin" in i.value for i in audit.info) == 1
    assert list(audit.multiselect[0].value) == ["implicit", "random"]


def test_audit_page_says_why_a_subset_cannot_run_in_the_dashboards_words(hh):
    random_logprobs(hh, "hh")
    at = app_test("audit_page.py", hh)
    at.run()
    at.multiselect(key="_audit_subsets").set_value(["map", "implicit"])
    next(b for b in at.button if b.label == "Estimate cost").click().run()
    (error,) = [e.value.replace("\\", "") for e in at.error]
    assert error.startswith("Metric map cannot run on this dataset") and "On the Score page" in error
    assert "marginlens" not in error and "--" not in error  # core's error names CLI commands
    assert error.endswith("What runs now: implicit, random, selective_dpo.")


def test_audit_offers_the_metrics_of_the_tables_it_is_asked_for(hh, capsys):
    """The newest reward table has no usable score (a rater off-format on every pair); `audit --reward` names
    one that has: the default subsets, the note and the sampled pairs all come from the table asked for."""
    random_logprobs(hh, "hh")
    ids = list(hh.load_pairs("hh")["pair_id"])
    save_rewards(hh, "hh", "good", ids, np.arange(20.0), np.zeros(20))
    save_rewards(hh, "hh", "unrated", ids, np.full(20, np.nan), np.full(20, np.nan))  # the newest
    base = ["audit", "hh", "--judge-model", "j", "--n", "2", "--estimate", "--json", "--workspace", str(hh.root)]
    with ScriptedJudge() as judge:
        assert main([*base, "--base-url", judge.base_url]) == 0
        newest = capsys.readouterr()
        assert main([*base, "--base-url", judge.base_url, "--reward", "good"]) == 0
        asked = capsys.readouterr()
    assert newest.err.count("No explicit margin") == 1  # the newest tables: implicit and random only
    assert "No explicit margin" not in asked.err

    def calls(out: str) -> int:
        return int(out.split("estimate: ")[1].split(" calls")[0])

    assert calls(asked.out) > calls(newest.out)  # the map and explicit subsets are sampled too


def test_the_score_page_reads_the_margins_once_across_reruns(hh, monkeypatch):
    """The note comes from the app's cached frame: a rerun (any widget change) reads no margins again."""
    import marginlens.app.readers as readers
    import marginlens.core.selection.margins as margins

    random_logprobs(hh, "hh")
    reads = []
    real = margins.load_margins

    def counted(*args, **kwargs):
        reads.append(args[1] if len(args) > 1 else kwargs.get("dataset"))
        return real(*args, **kwargs)

    monkeypatch.setattr(margins, "load_margins", counted)
    monkeypatch.setattr(readers, "load_margins", counted)
    at = app_test("score_page.py", hh)
    for _ in range(3):
        at.run()
        no_errors(at)
        assert sum("No explicit margin" in i.value for i in at.info) == 1
    assert reads == ["hh"]
