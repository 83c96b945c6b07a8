"""How the demo is made: its sampler, its questions and its pairing rule (the committed data: test_demo.py)."""

from __future__ import annotations

from marginlens.core.demo.build import FLIP_SHARE, build_pairs
from marginlens.core.demo.demo_sampling import sample_batch, sample_questions
from marginlens.core.demo.demo_tasks import TASK_MIX, demo_questions, question_key
from tiny_models import tiny_llama  # noqa: F401  (session fixture)

PROMPTS = ["What is the capital of France?", "One two three four five six seven eight nine ten hundred?", "Why?"]


def _load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def test_sampler_matches_generate_and_drops_finished_rows(tiny_llama):  # noqa: F811
    """A near-zero temperature makes sampling greedy: the decoding loop (left padding, cache, rows leaving
    the batch as they end) must then reproduce `generate` token for token."""
    import torch

    model, tokenizer = _load(tiny_llama)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in PROMPTS]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        greedy = model.generate(**batch, do_sample=False, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=-1)[:, batch["input_ids"].shape[1]:].tolist()
    # A stop token the first prompt reaches at its 4th step, so that row ends early and leaves the batch.
    stop = greedy[0][3]
    expected = [seq[:seq.index(stop) + 1] if stop in seq else seq for seq in greedy]
    got = sample_batch(model, tokenizer, PROMPTS, 1, seed=0, max_new_tokens=12, temperature=1e-4, eos=stop)
    assert [s[0]["ids"] for s in got] == expected
    assert [s[0]["ended"] for s in got] == [stop in seq for seq in greedy]
    assert got[0][0]["ended"] and len(got[0][0]["ids"]) <= 4
    assert all(len(s[0]["ids"]) == 12 for s in got if not s[0]["ended"])  # not ended = hit the cap


def test_sampling_is_seeded_and_resumes_from_its_cache(tiny_llama, tmp_path):  # noqa: F811
    model, tokenizer = _load(tiny_llama)
    first = sample_batch(model, tokenizer, PROMPTS, 3, seed=5, max_new_tokens=6)
    assert first == sample_batch(model, tokenizer, PROMPTS, 3, seed=5, max_new_tokens=6)
    assert first != sample_batch(model, tokenizer, PROMPTS, 3, seed=6, max_new_tokens=6)
    assert len({tuple(s["ids"]) for s in first[0]}) > 1  # several different samples per prompt
    questions = [{"prompt": p} for p in PROMPTS]
    cache = tmp_path / "samples.jsonl"
    out = sample_questions(questions, n=2, seed=1, max_new_tokens=5, cache_file=cache, batch_prompts=2,
                           model_spec=str(tiny_llama))
    assert len(out) == 3 and len(cache.read_text().splitlines()) == 2  # one line per batch of two prompts
    # killed after its first batch: the resumed run samples the second batch again, identically
    cache.write_text(cache.read_text().splitlines()[0] + "\n")
    assert sample_questions(questions, n=2, seed=1, max_new_tokens=5, cache_file=cache, batch_prompts=2,
                            model_spec=str(tiny_llama)) == out
    assert len(cache.read_text().splitlines()) == 2


def test_questions_are_distinct_and_the_eval_set_held_out():
    train, held_out = demo_questions(0)
    assert len(train) == sum(n for _, n, _ in TASK_MIX)
    assert len({q["prompt"] for q in train}) == len(train)
    assert not {q["prompt"] for q in train} & {q["prompt"] for q in held_out}
    # nor a commutative twin: "What is 5 plus 3?" is "What is 3 plus 5?"
    assert not {question_key(q["prompt"]) for q in train} & {question_key(q["prompt"]) for q in held_out}
    assert question_key("What is 5 plus 3? Reply.") == question_key("What is 3 plus 5? Reply.")
    assert question_key("What is 4 times 7?") == question_key("What is 7 times 4?")
    assert question_key("What is 8 minus 3?") != question_key("What is 3 minus 8?")
    assert question_key("What is 5 plus 3?") != question_key("What is 5 times 3?")
    assert len(held_out) < sum(n for _, _, n in TASK_MIX)  # seed 0 draws twins; the filter drops them
    assert {q["task"] for q in train} == {q["task"] for q in held_out} == {t for t, _, _ in TASK_MIX}
    assert demo_questions(0) == demo_questions(0) and demo_questions(0) != demo_questions(1)


def _sample(text, ended=True):
    return {"text": text, "ended": ended, "ids": []}


def test_pairs_hold_one_correct_and_one_incorrect_complete_response():
    q = {"task": "arith-1", "prompt": "What is 2 plus 3?", "answer": "5"}
    questions = [q] * 200 + [{**q, "prompt": "What is 4 plus 4?", "answer": "8"}]
    samples = [[_sample("2 + 3 = 5"), _sample("The sum of two and three is 5."), _sample("2 + 3 = 6"),
                _sample("I think it is 7, since 2 + 3 = 7 obviously."), _sample("2 + 3 = 5", ended=False),
                _sample("5 = 2 + 3 = 4", ended=False)]] * 200
    samples.append([_sample("4 + 4 = 8"), _sample("8"), _sample("It is 9", ended=False)])  # no wrong complete one
    rows, stats = build_pairs(questions, samples, seed=0)
    assert len(rows) == 200 and stats["dropped"] == {"arith-1": 1} and stats["cut"] == 401
    cut = {"5 = 2 + 3 = 4"}
    for row in rows:
        chosen, rejected = row["chosen"][-1]["content"], row["rejected"][-1]["content"]
        assert chosen not in cut and rejected not in cut
        assert row["chosen_correct"] != row["rejected_correct"]
        assert row["label_flipped"] == (not row["chosen_correct"])
        margin = row["score_chosen"] - row["score_rejected"]
        assert (margin < 0) == row["label_flipped"] and abs(margin) >= 0.5
    shorter = sum(len(r["chosen"][-1]["content"]) < len(r["rejected"][-1]["content"]) for r in rows) / len(rows)
    assert 0.35 <= shorter <= 0.65
    assert 0.5 * FLIP_SHARE <= sum(r["label_flipped"] for r in rows) / len(rows) <= 2 * FLIP_SHARE
