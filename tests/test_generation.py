"""Generation for the lab's evaluations: real tiny models, real generate(), the workspace cache."""

from __future__ import annotations

import json
import shutil

import pytest
from marginlens.core.experiments.eval_set import write_eval_set
from marginlens.core.experiments.generation import (
    GenerationParams,
    generate_responses,
    generation_key,
    generation_store,
)
from marginlens.core.keyed_log import KeyedLog
from marginlens.core.workspace import Workspace
from tiny_models import single_thread, smollm2, tiny_llama  # noqa: F401

PROMPTS = ["What is two plus three?", "Name a colour.", "Explain the reward margin please",
           "Write one python function", "Who is the capital of France?"]


@pytest.fixture(autouse=True)
def _one_thread():
    single_thread()


@pytest.fixture
def eval_file(tmp_path):
    path = tmp_path / "eval.jsonl"
    write_eval_set(path, [{"prompt": p, "id": f"q{i}"} for i, p in enumerate(PROMPTS)])
    return path


def run(ws, model, eval_file, params, logs=None, ticks=None):
    logs = [] if logs is None else logs
    ticks = [] if ticks is None else ticks
    return generate_responses(ws, str(model), eval_file, params, device="cpu", log=logs.append,
                              progress=lambda done, total: ticks.append((done, total)))


def test_greedy_is_deterministic_cached_and_resumes(tmp_path, tiny_llama, eval_file):  # noqa: F811
    params = GenerationParams(max_new_tokens=6, batch_size=2)
    ws = Workspace(tmp_path / "a")
    logs, ticks = [], []
    first = run(ws, tiny_llama, eval_file, params, logs, ticks)
    assert [r["id"] for r in first] == [f"q{i}" for i in range(5)]
    assert all(len(r["responses"]) == 1 and isinstance(r["responses"][0], str) for r in first)
    assert ticks == [(0, 5), (2, 5), (4, 5), (5, 5)] and "generating 5 of 5 prompts" in logs[0]
    # An untrained model runs to the cap: every response is marked cut, with all its tokens counted.
    assert all(r["truncated"] == [True] and r["new_tokens"] == [6] for r in first)

    # The same request again generates nothing (the model is not even loaded) and returns the stored records.
    logs, ticks = [], []
    assert run(ws, tiny_llama, eval_file, params, logs, ticks) == first
    assert logs == [] and ticks == [(5, 5)]

    # A fresh workspace generates the same responses (greedy, same batches).
    assert run(Workspace(tmp_path / "b"), tiny_llama, eval_file, params) == first

    # Resume: a workspace whose cache holds the first batch only (as after a kill) generates the rest, and
    # ends with exactly the records of the uninterrupted run.
    source = next((ws.root / "generations").iterdir())
    resumed_ws = Workspace(tmp_path / "c")
    target = resumed_ws.root / "generations" / source.name
    target.mkdir(parents=True)
    lines = (source / "responses.jsonl").read_text().splitlines()
    (target / "responses.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:15])  # + a torn line
    logs, ticks = [], []
    assert run(resumed_ws, tiny_llama, eval_file, params, logs, ticks) == first
    assert "generating 3 of 5 prompts" in logs[0] and ticks[0] == (2, 5)
    assert len(KeyedLog(target / "responses.jsonl", key_of=lambda r: r["id"])) == 5

    # Other params are another cache: the cap is part of the key.
    longer = run(ws, tiny_llama, eval_file, GenerationParams(max_new_tokens=8, batch_size=2))
    assert len(list((ws.root / "generations").iterdir())) == 2
    assert all(r["new_tokens"] == [8] for r in longer)
    # Greedy: the first 6 of 8 tokens continue the same way (ids, not text: a byte-level token may split a char).
    assert all(b["responses"][0].startswith(a["responses"][0][:-1]) for a, b in zip(first, longer, strict=True))


def test_stops_at_end_of_sequence_and_left_padding_changes_nothing(tmp_path, tiny_llama, eval_file):  # noqa: F811
    """A copy of the model whose generation config also ends on the token greedy decoding emits third for
    prompt q0: that response stops there, is not truncated, and has 3 tokens (2 + the stop)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ws = Workspace(tmp_path / "ws")
    alone = tmp_path / "alone.jsonl"
    write_eval_set(alone, [{"prompt": PROMPTS[0], "id": "q0"}])
    params = GenerationParams(max_new_tokens=6, batch_size=4)
    # Batched with longer prompts (left-padded) and alone: the same greedy answer for q0.
    batched = run(ws, tiny_llama, eval_file, params)[0]
    single = run(ws, tiny_llama, alone, params)[0]
    assert batched["responses"] == single["responses"]

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    greedy = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    third = int(greedy[0, -1])
    assert third not in (tokenizer.eos_token_id,) and third not in greedy[0, ids["input_ids"].shape[1]:-1].tolist()
    stopping = tmp_path / "stopping"
    shutil.copytree(tiny_llama, stopping)
    config = json.loads((stopping / "generation_config.json").read_text())
    config["eos_token_id"] = [tokenizer.eos_token_id, third]
    (stopping / "generation_config.json").write_text(json.dumps(config))
    stopped = run(ws, stopping, alone, params)[0]
    assert stopped["truncated"] == [False] and stopped["new_tokens"] == [3]
    assert stopped["responses"] == [tokenizer.decode(greedy[0, ids["input_ids"].shape[1]:-1])]
    assert stopped["responses"] != single["responses"]  # a different model identity: not served from q0's cache


def test_sampling_is_seeded_and_gives_n_responses(tmp_path, tiny_llama, eval_file):  # noqa: F811
    ws = Workspace(tmp_path / "ws")
    params = GenerationParams(max_new_tokens=5, do_sample=True, temperature=1.5, n=3, seed=7, batch_size=2)
    first = run(ws, tiny_llama, eval_file, params)
    assert all(len(r["responses"]) == 3 and len(r["truncated"]) == 3 for r in first)
    assert any(len(set(r["responses"])) > 1 for r in first)  # n samples, not one answer thrice
    again = run(Workspace(tmp_path / "other"), tiny_llama, eval_file, params)
    assert again == first  # the seed and the fixed batches make sampling reproducible
    reseeded = run(ws, tiny_llama, eval_file, GenerationParams(**{**params.__dict__, "seed": 8}))
    assert reseeded != first


def test_smollm2_answers_through_its_chat_template(tmp_path, smollm2):  # noqa: F811
    ws = Workspace(tmp_path / "ws")
    path = tmp_path / "eval.jsonl"
    write_eval_set(path, [{"prompt": "What is 2 + 3? Answer with the number only.", "answer": "5"},
                          {"prompt": "What is the capital of France? One word."}])
    out = run(ws, smollm2, path, GenerationParams(max_new_tokens=12, batch_size=2))
    assert [r["id"] for r in out] == ["1", "2"]
    # Short answers end with the end-of-turn token before the cap; no template markup leaks into the text.
    assert all(r["truncated"] == [False] and 0 < r["new_tokens"][0] < 12 for r in out)
    assert "5" in out[0]["responses"][0] and "Paris" in out[1]["responses"][0]
    assert not any("<|im" in r["responses"][0] for r in out)
    key = next((ws.root / "generations").iterdir())
    assert generation_store(ws, key.name).keys() == {"1", "2"}
    meta = json.loads((key / "meta.json").read_text())
    assert meta["params"]["max_new_tokens"] == 12 and meta["dtype"] == "float32" and meta["device"] == "cpu"
    assert key.name == generation_key(meta["model_identity"], meta["eval_set_fingerprint"],
                                      GenerationParams(max_new_tokens=12, batch_size=2), "float32", "cpu")


def test_cpu_and_gpu_generations_never_share_a_cache():
    keys = {generation_key("model-id", "eval-fp", GenerationParams(), "float32", device)
            for device in ("cpu", "cuda", "cuda:1")}
    assert len(keys) == 3
