"""Self-play's evolve step: strategies, the prompt-pool format and filters on hand rows, and the "evolve" job end to
end through the real worker, with an OpenAI-compatible scripted server on 127.0.0.1 and with a tiny local model."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from judge_server import Request, ScriptedJudge
from marginlens.core.errors import MarginLensError
from marginlens.core.experiments.eval_set import load_eval_set, write_eval_set
from marginlens.core.experiments.generation import GenerationParams, generate_responses
from marginlens.core.jobs import job_id_for, resume
from marginlens.core.selfplay.evolve_job import (
    EvolveParams,
    EvolverSpec,
    _checked_inputs,
    evolution_params,
    evolution_summary,
    evolved_path,
    parse_evolver,
    submit_evolution,
)
from marginlens.core.selfplay.prompt_pool import (
    filter_rewrites,
    load_pool,
    load_prompts,
    normalise,
    pool_fingerprint,
    write_pool,
)
from marginlens.core.selfplay.strategies import (
    DEFAULT_STRATEGIES,
    STRATEGIES,
    clean_rewrite,
    parse_strategies,
    strategy_tag,
)
from tiny_models import single_thread, tiny_llama  # noqa: F401


@pytest.fixture(autouse=True)
def _one_thread():
    single_thread()


def seed(row_id: str, prompt: str, **extra: str) -> dict:
    return {"id": row_id, "prompt": prompt, **extra, "parent": None, "strategy": None, "iteration": 0, "root": row_id}


POOL = [seed("p1", "Explain why the sky looks blue during the day.", answer="scattering", task="science"),
        seed("p2", "Write a python function that adds two numbers."),
        seed("p3", "Name a colour."),
        seed("x", "What is two plus three?")]


# ---------------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------------
def test_strategies_registry_parsing_and_instructions():
    assert DEFAULT_STRATEGIES == ("breadth", "deepen", "constrain", "concretize", "reason")
    assert [strategy_tag(s) for s in parse_strategies("breadth, Deepen")] == ["breadth@1", "deepen@1"]
    assert parse_strategies(["reason@1", "constrain"]) == [STRATEGIES["reason"], STRATEGIES["constrain"]]
    for text, message in [("breadth,widen", "unknown rewrite strategy 'widen' (known: breadth, deepen, constrain, "
                                            "concretize, reason)"),
                          ("deepen@7", "at version 1, not '7'"), ("reason,reason", "given twice"),
                          (" , ", "no rewrite strategy given")]:
        with pytest.raises(MarginLensError, match=re.escape(message)):
            parse_strategies(text)
    prompt = 'Parse {"a": {b}} in python'  # braces pass through untouched
    texts = [STRATEGIES[name].instruction(prompt) for name in DEFAULT_STRATEGIES]
    assert all(prompt in t and "{prompt}" not in t for t in texts) and len(set(texts)) == 5


def test_clean_rewrite_strips_wrapping_and_nothing_else():
    cases = {
        '  "What is 2+2?"  \n': "What is 2+2?",
        'Rewritten prompt: "Why is grass green?"': "Why is grass green?",
        "```text\nNew prompt: Say hi in French.\n```": "Say hi in French.",
        "**New question:** How far is the moon?": "How far is the moon?",
        "Here is the rewritten prompt:\nList three primes.": "List three primes.",
        "\u201cName a river.\u201d": "Name a river.",
        '"Pick "A" or "B"."': '"Pick "A" or "B"."',  # quotes inside: not one pair around the whole text
        '"A" or "B"?': '"A" or "B"?',
        "Prompts about prompts: write one.": "Prompts about prompts: write one.",
        "Version: 3 of the API is out. Summarise it.": "Version: 3 of the API is out. Summarise it.",
        "Explain `map` in python.": "Explain `map` in python.",
        "": "",
    }
    for raw, cleaned in cases.items():
        assert clean_rewrite(raw) == cleaned, raw


# ---------------------------------------------------------------------------------------------------
# prompt pool
# ---------------------------------------------------------------------------------------------------
def test_pool_round_trip_and_eval_set_compatibility(tmp_path):
    rewrite = {"id": "p1>deepen", "prompt": "Why is the sky blue at noon but red at dusk?", "parent": "p1",
               "strategy": "deepen@1", "iteration": 1, "root": "p1"}
    path = tmp_path / "pool.jsonl.gz"
    write_pool(path, [*POOL, rewrite])
    rows = load_pool(path)
    assert rows == [*POOL, rewrite] and pool_fingerprint(rows) == pool_fingerprint([*POOL, rewrite])
    assert pool_fingerprint(rows) != pool_fingerprint([*POOL, {**rewrite, "iteration": 2}])
    as_eval = load_eval_set(path)  # a superset of the eval-set format
    assert [r["id"] for r in as_eval] == [r["id"] for r in rows] and as_eval[0]["answer"] == "scattering"
    plain = tmp_path / "plain.jsonl"
    write_eval_set(plain, [{"prompt": "Name a fish."}, {"prompt": "Add 1 and 2.", "answer": "3", "id": "add"}])
    assert load_prompts(plain) == [seed("1", "Name a fish."), seed("add", "Add 1 and 2.", answer="3")]
    assert load_prompts(path) == rows


def test_pool_validation_names_file_line_and_field(tmp_path):
    good = json.dumps(POOL[0])
    bad_rows = [
        ({**POOL[1], "prompt": "  "}, "prompt", "missing or empty"),
        ({**POOL[1], "parent": "p1"}, "strategy", "NAME@VERSION"),
        ({**POOL[1], "strategy": "deepen@1"}, "strategy", "a seed (parent null) has no strategy"),
        ({**POOL[1], "iteration": 2}, "iteration", "a seed (parent null) has iteration 0"),
        ({**POOL[1], "iteration": True}, "iteration", "whole number"),
        ({**POOL[1], "root": "p9"}, "root", "its own root"),
        ({**POOL[1], "parent": "p1", "strategy": "deepen@1", "iteration": 0}, "iteration", "iteration 1 or later"),
        ({**POOL[1], "answer": 3}, "answer", "expected a string"),
        ({**POOL[1], "score": 1.0}, "score", "not a pool field"),
        ({**POOL[1], "id": "p1", "root": "p1"}, "id", "duplicate id 'p1' (first on line 1)"),
    ]
    for row, field, message in bad_rows:
        path = tmp_path / "bad.jsonl"
        path.write_text(good + "\n\n" + json.dumps(row) + "\n")
        with pytest.raises(MarginLensError, match=re.escape(f"prompt pool {path}: line 3, field '{field}': ")
                           + ".*" + re.escape(message)):
            load_pool(path)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(MarginLensError, match="no rows"):
        load_pool(tmp_path / "empty.jsonl")
    with pytest.raises(MarginLensError, match=re.escape("line 2, field 'iteration'")):
        write_pool(tmp_path / "out.jsonl", [POOL[0], {**POOL[1], "iteration": -1}])
    assert not (tmp_path / "out.jsonl").exists()


def test_filters_on_hand_rows():
    parents = {r["id"]: r for r in POOL}
    seen = {normalise(r["prompt"]) for r in POOL} | {normalise("What is the capital of France?")}
    before = set(seen)

    def cand(parent: str, name: str, text: str) -> dict:
        return {"id": f"{parent}>{name}", "prompt": text, "parent": parent, "strategy": f"{name}@1",
                "iteration": 2, "root": parent}

    p3 = "Name a colour."  # 14 characters: with the ratio 5, a rewrite must be over 2.8 and under 70 characters
    candidates = [cand("p1", "breadth", "Explain why sunsets look red."),
                  cand("p1", "deepen", "EXPLAIN why the sky\n looks   blue during the day."),
                  cand("p1", "constrain", "   "),
                  cand("p2", "breadth", "what is the capital of  france?"),
                  cand("p2", "deepen", "x" * 230),  # 46 * 5 = 230: not below, so too long
                  cand("p2", "constrain", "x" * 229),
                  cand("p3", "breadth", "Hi"),  # 2 * 5 = 10 <= 14
                  cand("p3", "deepen", "explain why sunsets look red."),  # kept earlier in this call
                  cand("p3", "constrain", "What is two plus three?"),  # a pool prompt
                  cand("p3", "concretize", "x" * 69),
                  cand("p3", "reason", "x" * 70)]
    assert len(parents["p2"]["prompt"]) == 46 and len(p3) == 14
    kept, dropped = filter_rewrites(candidates, parents, seen)
    assert [k["id"] for k in kept] == ["p1>breadth", "p2>constrain", "p3>concretize"]
    assert kept[0] == candidates[0]  # lineage untouched
    assert [(d["id"], d["reason"]) for d in dropped] == [
        ("p1>deepen", "same_as_parent"), ("p1>constrain", "empty"), ("p2>breadth", "duplicate"),
        ("p2>deepen", "too_long"), ("p3>breadth", "too_short"), ("p3>deepen", "duplicate"),
        ("p3>constrain", "duplicate"), ("p3>reason", "too_long")]
    assert len(kept) + len(dropped) == len(candidates) and seen == before  # nothing lost; the caller's set kept
    assert [d["reason"] for d in filter_rewrites([cand("p3", "breadth", "Hi!")], parents, set(), 4.0)[1]] == [
        "too_short"] and filter_rewrites([cand("p3", "breadth", "Hi!")], parents, set(), 7.0)[0]
    with pytest.raises(MarginLensError, match="parent 'zz' is not among"):
        filter_rewrites([cand("zz", "breadth", "Hello there")], parents, seen)
    with pytest.raises(MarginLensError, match="above 1"):
        filter_rewrites([], parents, seen, max_ratio=1.0)


# ---------------------------------------------------------------------------------------------------
# the job's spec
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def files(tmp_path):
    pool, eval_set = tmp_path / "pool.jsonl", tmp_path / "eval.jsonl"
    write_pool(pool, POOL)
    write_eval_set(eval_set, [{"prompt": "What is the capital of France?", "id": "france"}])
    return pool, eval_set


def test_evolver_parsing_and_params(files):
    pool, eval_set = files
    spec = parse_evolver("openai:gpt-4o-mini", base_url="http://127.0.0.1:9/v1/", api_key_env="EVOLVE_KEY",
                         max_calls=5)
    assert spec == EvolverSpec("openai", "gpt-4o-mini", "http://127.0.0.1:9/v1", "EVOLVE_KEY", 5)
    assert EvolverSpec.from_dict(spec.to_dict()) == spec and parse_evolver("local:./m").model == "./m"
    for make, message in [(lambda: parse_evolver("gpt-4o"), "expected local:MODEL"),
                          (lambda: parse_evolver("openai:"), "name the model"),
                          (lambda: parse_evolver("local:m", max_calls=3), "for openai evolvers only"),
                          (lambda: parse_evolver("openai:m", api_key_env="sk-123-abc"), "never put the key"),
                          (lambda: parse_evolver("openai:m", max_calls=0), "positive"),
                          (lambda: parse_evolver("openai:m", base_url="https://u:sk-9@h/v1"), "not in the URL"),
                          (lambda: EvolveParams(top_p=0), "top_p"), (lambda: EvolveParams(max_ratio=1), "above 1")]:
        with pytest.raises(MarginLensError, match=re.escape(message)):
            make()

    def params(**kw):
        return evolution_params(pool, kw.pop("parents", ["p1", "p2"]), evolver=kw.pop("evolver", spec),
                                iteration=kw.pop("iteration", 1), exclude=[eval_set], **kw)

    base = params()
    assert base["strategies"] == [f"{n}@1" for n in DEFAULT_STRATEGIES] and base["evolver"] == spec.to_dict()
    assert base["exclude"] == [{"path": str(eval_set.resolve()), "fingerprint": pool_fingerprint(load_prompts(eval_set))}]
    first = job_id_for("evolve", base)
    assert job_id_for("evolve", params()) == first
    for changed in [params(iteration=2), params(strategies=["breadth"]), params(parents=["p2", "p1"]),
                    params(params=EvolveParams(seed=1))]:
        assert job_id_for("evolve", changed) != first
    for kw, message in [({"parents": ["p1", "nope"]}, "no row with id 'nope'"), ({"parents": []}, "no parent"),
                        ({"parents": ["p1", "p1"]}, "given twice"), ({"iteration": 0}, "counts from 1"),
                        ({"strategies": ["widen"]}, "unknown rewrite strategy")]:
        with pytest.raises(MarginLensError, match=re.escape(message)):
            params(**kw)
    # A worker refuses inputs that changed since the job was submitted.
    assert _checked_inputs(base)[1] >= {normalise(r["prompt"]) for r in POOL} | {"what is the capital of france?"}
    write_eval_set(eval_set, [{"prompt": "Another question?", "id": "france"}])
    with pytest.raises(MarginLensError, match="changed since this evolution was submitted"):
        _checked_inputs(base)


# ---------------------------------------------------------------------------------------------------
# the job, through the worker
# ---------------------------------------------------------------------------------------------------
STRATS = ["breadth", "deepen", "constrain"]
SCRIPT = {("p1", "breadth"): 'Rewritten prompt: "Explain why sunsets look red."',
          ("p1", "deepen"): "```\nexplain WHY the sky   looks blue during the day.\n```",
          ("p1", "constrain"): "",
          ("p2", "breadth"): "what is the capital of   france?",
          ("p2", "deepen"): "x" * 500,
          ("p2", "constrain"): "Write a python function that adds two numbers without using +.",
          ("p3", "breadth"): "Hi",
          ("p3", "deepen"): "Explain why sunsets look red.",
          ("p3", "constrain"): "Name a colour that is also a fruit."}


def asked(request: Request) -> tuple[str, str]:
    """(parent id, strategy) of an instruction, by rebuilding each candidate instruction."""
    text = request.messages[-1]["content"]
    for row in POOL:
        for name in STRATS:
            if STRATEGIES[name].instruction(row["prompt"]) == text:
                return row["id"], name
    raise AssertionError(f"unexpected instruction {text[:80]!r}")


def test_openai_evolver_through_the_job(ws, files):
    pool, eval_set = files
    secret = "sk-evolve-secret-0123456789"
    env = {"EVOLVE_KEY": secret}
    failing = {"on": True}
    with ScriptedJudge(answer=lambda r: SCRIPT[asked(r)], faults=["500"],
                       fault_for=lambda r: "400" if failing["on"] and asked(r) == ("p3", "constrain") else None
                       ) as server:
        spec = parse_evolver("openai:evolver-1", base_url=server.base_url, api_key_env="EVOLVE_KEY")

        def submit(evolver: EvolverSpec = spec, settings: EvolveParams | None = None):
            return submit_evolution(ws, pool, ["p1", "p2", "p3"], evolver=evolver, iteration=2, strategies=STRATS,
                                    exclude=[eval_set], params=settings or EvolveParams(), env=env)

        # Run 1: a 500 (retried), then a 400 on the last request fails the job; what was answered is stored.
        job = submit()
        status = job.wait(timeout=120)
        assert status.state == "failed" and "p3>constrain" in status.message, job.log_tail()
        assert server.faults_seen().count("500") == 1 and len(server.requests) == 10
        # Run 2 (the same job resumed): asks only the request that failed.
        failing["on"] = False
        assert resume(ws, job, env=env).id == job.id
        assert job.wait(timeout=120).state == "done", job.log_tail()
        assert len(server.requests) == 11
        answered = Counter(asked(r) for r in server.requests if r.answered)
        assert set(answered) == set(SCRIPT) and set(answered.values()) == {1}  # each rewrite paid for once

        summary = evolution_summary(job)
        assert summary["asked"] == 9 and summary["kept"] == 3 and job.result() == summary
        assert summary["dropped"] == {"truncated": 0, "empty": 1, "too_long": 1, "too_short": 1, "same_as_parent": 1,
                                  "duplicate": 2}
        assert summary["strategies"] == ["breadth@1", "deepen@1", "constrain@1"]
        assert summary["by_strategy"]["constrain@1"] == {"kept": 2, "dropped": 1}
        kept = load_pool(evolved_path(job))
        assert kept == [
            {"id": "p1>breadth", "prompt": "Explain why sunsets look red.", "parent": "p1", "strategy": "breadth@1",
             "iteration": 2, "root": "p1"},  # no answer/task inherited from p1
            {"id": "p2>constrain", "prompt": SCRIPT[("p2", "constrain")], "parent": "p2",
             "strategy": "constrain@1", "iteration": 2, "root": "p2"},
            {"id": "p3>constrain", "prompt": SCRIPT[("p3", "constrain")], "parent": "p3",
             "strategy": "constrain@1", "iteration": 2, "root": "p3"}]
        dropped = [json.loads(line) for line in (job.results_dir / "dropped.jsonl").read_text().splitlines()]
        assert {d["id"]: d["reason"] for d in dropped} == {
            "p1>deepen": "same_as_parent", "p1>constrain": "empty", "p2>breadth": "duplicate",
            "p2>deepen": "too_long", "p3>breadth": "too_short", "p3>deepen": "duplicate"}
        assert all(d["raw"] == SCRIPT[tuple(d["id"].split(">"))] for d in dropped)
        assert {r.authorization for r in server.requests} == {f"Bearer {secret}"}
        assert not any(secret in p.read_text(errors="replace") for p in ws.root.rglob("*") if p.is_file())

        # A new job with a cap asks nothing already stored in the workspace: it finishes within a cap of 1.
        capped = submit(EvolverSpec("openai", "evolver-1", server.base_url, "EVOLVE_KEY", max_calls=1))
        assert capped.id != job.id and capped.wait(timeout=120).state == "done", capped.log_tail()
        assert len(server.requests) == 11 and evolved_path(capped).read_bytes() == evolved_path(job).read_bytes()
        # Another seed is another set of answers: the cap stops it, and a resume does not go over it.
        other = submit(EvolverSpec("openai", "evolver-1", server.base_url, "EVOLVE_KEY", max_calls=2),
                       EvolveParams(seed=7))
        status = other.wait(timeout=120)
        assert status.state == "failed" and "call budget of 2" in status.message and len(server.requests) == 13
        assert resume(ws, other, env=env).wait(timeout=120).state == "failed" and len(server.requests) == 13


def test_local_evolver_through_the_job(ws, files, tiny_llama):  # noqa: F811
    pool, eval_set = files
    settings = EvolveParams(max_new_tokens=12, batch_size=4, seed=3)
    job = submit_evolution(ws, pool, ["p2", "p1"], evolver=parse_evolver(f"local:{tiny_llama}"), iteration=1,
                           strategies=["breadth", "reason"], exclude=[eval_set], params=settings, device="cpu")
    status = job.wait(timeout=180)
    assert status.state == "done", job.log_tail()
    assert job.spec["params"]["evolver"]["model"] == str(Path(tiny_llama).resolve())
    ids = ["p2>breadth", "p2>reason", "p1>breadth", "p1>reason"]
    instructions = job.results_dir / "instructions.jsonl"
    by_id = {r["id"]: r for r in POOL}
    assert load_eval_set(instructions) == [
        {"id": i, "prompt": STRATEGIES[i.split(">")[1]].instruction(by_id[i.split(">")[0]]["prompt"])} for i in ids]
    # The worker's answers are the generation cache's: sampled with the job's seed, one per instruction.
    made = generate_responses(ws, str(tiny_llama), instructions,
                              GenerationParams(max_new_tokens=12, do_sample=True, temperature=0.8, top_p=0.95,
                                               seed=3, n=1, batch_size=4), device="cpu")
    raw = {i: m["responses"][0] for i, m in zip(ids, made, strict=True)}
    assert len(set(raw.values())) > 1
    kept = load_pool(evolved_path(job)) if evolved_path(job).read_text() else []
    dropped = [json.loads(line) for line in (job.results_dir / "dropped.jsonl").read_text().splitlines()]
    assert sorted([k["id"] for k in kept] + [d["id"] for d in dropped]) == sorted(ids)  # no rewrite lost
    for row in kept:
        assert row["prompt"] == clean_rewrite(raw[row["id"]]) and row["iteration"] == 1
        assert (row["parent"], row["root"], row["strategy"]) == (row["id"].split(">")[0], row["id"].split(">")[0],
                                                                 row["id"].split(">")[1] + "@1")
    for row in dropped:
        assert row["raw"] == raw[row["id"]] and row["prompt"] == clean_rewrite(raw[row["id"]])
    summary = evolution_summary(job)
    assert (summary["asked"], summary["kept"], sum(summary["dropped"].values())) == (4, len(kept), len(dropped))
    assert summary["truncated"] == sum(m["truncated"][0] for m in made) == summary["dropped"]["truncated"]
    cut = {i for i, m in zip(ids, made, strict=True) if m["truncated"][0]}
    assert {d["id"] for d in dropped if d["reason"] == "truncated"} == cut and not cut & {k["id"] for k in kept}
    again = submit_evolution(ws, pool, ["p2", "p1"], evolver=parse_evolver(f"local:{tiny_llama}"), iteration=1,
                             strategies=["breadth", "reason"], exclude=[eval_set], params=settings, device="cpu")
    assert again.id == job.id and again.status().state == "done"


def test_openai_requests_carry_the_sampling_settings():
    """temperature, top_p and the token cap reach the endpoint; a judge's Endpoint (top_p None) sends no top_p."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from marginlens.core.chat_client import Endpoint, JudgeClient

    bodies: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            out = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "New one?"}}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out.encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        client = JudgeClient(Endpoint("m", url, max_output_tokens=33, temperature=0.7, top_p=0.9), "key")
        assert client.complete([{"role": "user", "content": "Rewrite it."}]).text == "New one?"
        JudgeClient(Endpoint("m", url), "key").complete([{"role": "user", "content": "Judge it."}])
    finally:
        server.shutdown()
        server.server_close()
    assert [(b["temperature"], b["top_p"], b["max_tokens"]) for b in bodies[:1]] == [(0.7, 0.9, 33)]
    assert "top_p" not in bodies[1]
