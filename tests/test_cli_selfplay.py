"""`marginlens selfplay`: refusals in words, the plan printed before anything starts, no start without --yes off a
terminal, and --detach submitting the very "selfplay" job the spec builder describes (cancelled before any model
runs: the worker checks the cancel flag before its first child job)."""

from __future__ import annotations

import pytest
from helpers_experiment import DATASET, build_dataset
from marginlens.core import jobs
from marginlens.core.cli import main
from marginlens.core.job_status import JobState
from marginlens.core.selfplay.selfplay_spec import build_selfplay_spec, plan_selfplay
from tiny_models import tiny_llama  # noqa: F401  (session fixture)

BASE = ["--annotate", "verifier:self-consistency", "--eval", "verifier:answer-match"]


@pytest.fixture
def sp_ws(tmp_path):
    return build_dataset(tmp_path / "workspace")


def run(ws, *args: str) -> int:
    return main(["--workspace", str(ws.root), "selfplay", *args])


@pytest.mark.parametrize("args, message", [
    (["--annotate", "judge:some-model", "--eval", "verifier:answer-match"], "a judge compares two models"),
    (["--annotate", "verifier:self-consistency", "--annotate-url", "http://127.0.0.1:9/v1", "--eval",
      "verifier:answer-match"], "--annotate-url sets the endpoint of a rating: or judge: model, not of verifier:"),
    ([*BASE, "--eval-url", "http://127.0.0.1:9/v1"], "--eval-url sets the endpoint"),
    ([*BASE, "--strategies", "breadth,sideways"], "sideways"),
    ([*BASE, "--iterations", "0"], "--iterations must be at least 1"),
    ([*BASE, "--metrics", "map,nonsense"], "unknown metric 'nonsense'"),
    ([*BASE, "--evolver", "somewhere:model"], "expected local:MODEL"),
    ([*BASE, "--set", "seed=3"], "use --seeds"),
    (["--annotate", "verifier:no-such", "--eval", "verifier:answer-match"], "no-such"),
    (["--annotate", "verifier:answer-match", "--eval", "verifier:answer-match"], "a rewritten prompt has none"),
    ([*BASE, "--metrics", "map,dpo_gap"], "self-play can select by map, explicit"),
    ([*BASE, "--evolver-max-calls", "5"], "for openai evolvers only"),
    ([*BASE, "--evolver", "openai:writer", "--evolver-max-calls", "0"], "max_calls must be a positive number"),
    ([*BASE, "--evolver", "openai:writer", "--evolver-key-env", "not a name"], "api_key_env names an environment"),
])
def test_argument_errors_are_clear(sp_ws, capsys, args, message):
    assert run(sp_ws, DATASET, *args, "--yes", "--detach") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not jobs.list_jobs(sp_ws)


def test_urls_reach_the_annotator_the_evaluator_and_the_evolver(sp_ws):
    from marginlens.core.cli import build_parser
    from marginlens.core.cli.selfplay_commands import spec_from_args

    url = "http://127.0.0.1:9/v1"
    args = build_parser().parse_args(["selfplay", DATASET, "--annotate", "rating:rater", "--annotate-url", url,
                                      "--eval", "judge:judge", "--eval-url", url, "--evolver", "openai:writer",
                                      "--evolver-url", url])
    spec = spec_from_args(sp_ws, args)
    assert (spec.annotator.kind, spec.annotator.target, spec.annotator.base_url) == ("rating", "rater", url)
    assert (spec.evaluator.kind, spec.evaluator.base_url) == ("judge", url)
    assert (spec.evolver["kind"], spec.evolver["model"], spec.evolver["base_url"]) == ("openai", "writer", url)
    assert spec.evolver["api_key_env"] is None and spec.evolver["max_calls"] is None  # no cap unless asked


def test_evolver_key_variable_and_call_cap_reach_the_spec(sp_ws):
    from marginlens.core.cli import build_parser
    from marginlens.core.cli.selfplay_commands import spec_from_args
    from marginlens.core.selfplay.evolve_job import EvolverSpec

    args = build_parser().parse_args(["selfplay", DATASET, *BASE, "--evolver", "openai:writer", "--evolver-key-env",
                                      "WRITER_KEY", "--evolver-max-calls", "7"])
    spec = spec_from_args(sp_ws, args)
    assert spec.evolver == EvolverSpec("openai", "writer", None, "WRITER_KEY", 7).to_dict()
    assert spec.to_params() == build_selfplay_spec(
        sp_ws, DATASET, annotate="verifier:self-consistency", eval="verifier:answer-match", evolver="openai:writer",
        evolver_key_env="WRITER_KEY", evolver_max_calls=7,
        sampling={"n": 5, "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 128},
        evolve={"max_new_tokens": 128}, profile="reference").to_params()  # the CLI's defaults on CPU, spelled out
    assert spec.rules["profile"] == "reference" and spec.evolve["max_ratio"] is None


def test_help_names_what_self_play_can_use(capsys):
    from marginlens.core.selfplay.selfplay_spec import selfplay_metrics

    with pytest.raises(SystemExit):
        main(["selfplay", "--help"])
    out = " ".join(capsys.readouterr().out.split("options:")[1].split())  # the options, not the usage line
    annotate = out.split("--annotate EVAL")[1].split("--annotate-url")[0]
    assert "verifier:self-consistency" in annotate and "reward:MODEL" in annotate and "rating:MODEL" in annotate
    assert "answer-match" not in annotate  # a rewrite has no reference answer to match
    metrics = out.split("--metrics METRICS")[1].split("--seeds")[0]
    assert ", ".join(selfplay_metrics()) in metrics
    assert "dpo_gap" not in metrics and "rip" not in metrics.replace("eva's", "")
    assert "--evolver-key-env NAME" in out and "--evolver-max-calls N" in out


def test_unknown_dataset_and_missing_annotator(sp_ws, capsys):
    assert run(sp_ws, "nope", *BASE, "--yes", "--detach") == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        run(sp_ws, DATASET, "--eval", "verifier:answer-match")
    assert exc.value.code == 2
    assert "--annotate" in capsys.readouterr().err


def test_plan_printed_and_no_start_without_yes(sp_ws, capsys):
    assert run(sp_ws, DATASET, *BASE, "--max-prompts", "6", "--strategies", "breadth,reason") == 2
    out, err = capsys.readouterr()
    spec = build_selfplay_spec(sp_ws, DATASET, annotate="verifier:self-consistency", eval="verifier:answer-match",
                               max_prompts=6, strategies="breadth,reason")
    plan = plan_selfplay(sp_ws, spec)
    assert plan.seed_prompts == 6 and plan.rewrites_asked == 2 * max(1, int(0.25 * 6))
    assert all(f"  {line}" in out.splitlines() for line in plan.lines()), out
    assert "pass --yes" in err
    assert not jobs.list_jobs(sp_ws)  # asked, not answered: nothing started


def test_detach_submits_the_spec(sp_ws, tiny_llama, capsys):  # noqa: F811
    args = [DATASET, *BASE, "--policy", str(tiny_llama), "--iterations", "3", "--metrics", "map,explicit,random",
            "--seeds", "2", "--ratio", "0.5", "--strategies", "deepen,constrain", "--max-prompts", "8", "--n", "3",
            "--temperature", "0.7", "--top-p", "0.9", "--max-new-tokens", "16", "--evolve-max-new-tokens", "24",
            "--max-ratio", "3", "--backend", "transformers", "--method", "dpo", "--set", "max_steps=2",
            "--weight", "0.5", "--signed", "--device", "cpu", "--yes", "--detach"]
    assert run(sp_ws, *args) == 0
    out = capsys.readouterr().out
    (job,) = jobs.list_jobs(sp_ws, "selfplay")
    job.cancel()  # before the worker reaches its first child: no model is loaded
    assert f"self-play job {job.id}" in out
    spec = build_selfplay_spec(
        sp_ws, DATASET, annotate="verifier:self-consistency", eval="verifier:answer-match", policy=str(tiny_llama),
        iterations=3, metrics=["map", "explicit", "random"], seeds=2, ratio=0.5, weight=0.5, signed=True,
        strategies="deepen,constrain", max_prompts=8,
        sampling={"n": 3, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 16},
        evolve={"max_new_tokens": 24, "max_ratio": 3.0}, backend="transformers", method="dpo",
        overrides={"max_steps": 2}, device="cpu")
    params = job.spec["params"]
    assert params == spec.to_params()
    assert params["strategies"] == ["deepen@1", "constrain@1"] and params["seeds"] == [42, 43]
    assert params["evolver"]["kind"] == "local" and params["evolver"]["model"] == spec.policy
    assert job.wait(poll=0.2, timeout=120).state is JobState.CANCELLED, job.log_tail(20)
    assert [j.kind for j in jobs.list_jobs(sp_ws)] == ["selfplay"]  # no child job was submitted
    # the same command again joins the same job instead of starting another
    assert run(sp_ws, *args) == 0
    assert [j.id for j in jobs.list_jobs(sp_ws, "selfplay")] == [job.id]
    jobs.get_job(sp_ws, job.id).cancel()
    assert job.wait(poll=0.2, timeout=120).state is JobState.CANCELLED, job.log_tail(20)


def test_profile_flags_reach_the_spec(sp_ws, capsys):
    from marginlens.core.cli import build_parser
    from marginlens.core.cli.selfplay_commands import spec_from_args

    parse = build_parser().parse_args
    ours = spec_from_args(sp_ws, parse(["selfplay", DATASET, *BASE, "--profile", "marginlens"]))
    assert "rules" not in ours.to_params() and ours.evolve_params(0).max_ratio == 5.0
    theirs = spec_from_args(sp_ws, parse(["selfplay", DATASET, *BASE, "--filter-prompt", "--train-size", "7"]))
    assert theirs.rules["train_size"] == 7 and theirs.evolve_params(0).max_ratio == 5.0
    assert theirs.rules["system_prompt"] == "You are a helpful assistant."  # SmolLM2 is no Gemma
    assert run(sp_ws, DATASET, *BASE, "--profile", "marginlens", "--train-size", "7", "--yes", "--detach") == 2
    assert "options of --profile reference" in capsys.readouterr().err
    assert run(sp_ws, DATASET, *BASE, "--max-prompts", "6") == 2  # asked, not answered
    out = capsys.readouterr().out
    assert "profile reference (the authors' evol_select scripts)" in out and "(CPU: the authors' 4096" in out
