"""The built-in demo: real SmolLM2-135M-Instruct samples on questions with checkable answers.

Each prompt gets several sampled responses; a transparent verifier rule scores them (correct answer
+1.0, brevity up to +0.3), the best and worst form a pair, and a seeded 12% of pairs get their
labels deliberately flipped (chosen = the worse response, still carrying the higher score), so the
noise-suspect and audit views have real label noise to find. Implicit margins come from the real
scorer. `python -m marginlens.core.demo.build` regenerates the committed files in core/demo/demo_data/
(a few minutes on a CPU); `ensure_demo` installs them into a workspace in about a second.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

from marginlens.core.atomic import write_with
from marginlens.core.data.ingest import import_dataset
from marginlens.core.workspace import Workspace

DEMO_NAME = "demo"
DATA_DIR = Path(__file__).resolve().parent / "demo_data"
PAIRS_FILE = DATA_DIR / "demo_pairs.jsonl.gz"
SCORES_DIR = DATA_DIR / "scores"
FLIP_SHARE = 0.12

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Russia": "Moscow", "Canada": "Ottawa",
    "Australia": "Canberra", "Egypt": "Cairo", "Kenya": "Nairobi", "Brazil": "Brasilia", "Argentina": "Buenos Aires",
    "Mexico": "Mexico City", "Peru": "Lima", "Chile": "Santiago", "Norway": "Oslo", "Sweden": "Stockholm",
    "Finland": "Helsinki", "Denmark": "Copenhagen", "Poland": "Warsaw", "Greece": "Athens", "Turkey": "Ankara",
    "Ireland": "Dublin", "Austria": "Vienna", "Hungary": "Budapest", "Netherlands": "Amsterdam",
    "Belgium": "Brussels", "Switzerland": "Bern", "Thailand": "Bangkok", "Vietnam": "Hanoi",
    "South Korea": "Seoul", "Indonesia": "Jakarta", "Iran": "Tehran", "Nigeria": "Abuja", "Cuba": "Havana",
    "Colombia": "Bogota", "Ukraine": "Kyiv",
}
FACTS = [
    ("How many legs does a spider have?", "8"), ("How many days are in a week?", "7"),
    ("How many continents are there?", "7"), ("How many sides does a hexagon have?", "6"),
    ("How many minutes are in an hour?", "60"), ("How many hours are in a day?", "24"),
    ("How many months are in a year?", "12"), ("How many legs does an insect have?", "6"),
    ("What is the boiling point of water in degrees Celsius?", "100"),
    ("How many planets are in the solar system?", "8"), ("How many sides does a triangle have?", "3"),
    ("How many strings does a standard guitar have?", "6"), ("How many players are on a soccer team on the field?", "11"),
    ("What is the freezing point of water in degrees Celsius?", "0"), ("How many letters are in the English alphabet?", "26"),
]


def demo_questions(seed: int = 0, arithmetic: int = 145) -> list[dict[str, str]]:
    rng = random.Random(seed)
    questions = [{"task": "capital", "prompt": f"What is the capital of {country}?", "answer": city}
                 for country, city in CAPITALS.items()]
    questions += [{"task": "fact", "prompt": q, "answer": a} for q, a in FACTS]
    for _ in range(arithmetic):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        questions.append({"task": "arithmetic", "prompt": f"What is {a} plus {b}?", "answer": str(a + b)})
    return questions


_NUMBER = re.compile(r"-?\d+")


def is_correct(task: str, answer: str, response: str) -> bool:
    """Capitals: the city is named. Numbers: the claimed result -- the number after the last '=',
    else the last number -- is the answer (a response that restates "28 + 4" first is not wrong)."""
    if task == "capital":
        return answer.lower() in response.lower()
    text = response.replace(",", "")
    after_equals = _NUMBER.findall(text.rsplit("=", 1)[1]) if "=" in text else []
    claimed = after_equals[0] if after_equals else (_NUMBER.findall(text) or [None])[-1]
    return claimed == answer


def verifier_score(task: str, answer: str, response: str) -> float:
    """The demo's explicit reward: +1 for the right answer, up to +0.3 for brevity."""
    brevity = max(0.0, 1.0 - len(response.split()) / 60.0)
    return round(float(is_correct(task, answer, response)) + 0.3 * brevity, 4)


def sample_responses(questions: list[dict[str, str]], n: int = 4, max_new_tokens: int = 48, seed: int = 0,
                     batch_prompts: int = 16) -> list[list[str]]:
    """n samples per question from SmolLM2-135M-Instruct (temperature 0.8, top_p 0.95, as the paper's setting)."""
    import torch
    from marginlens.core.scoring.models import load_causal_lm

    model, tokenizer, _ = load_causal_lm(None, device="cpu")
    tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    out: list[list[str]] = []
    for start in range(0, len(questions), batch_prompts):
        chunk = questions[start:start + batch_prompts]
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": q["prompt"]}], tokenize=False,
                                               add_generation_prompt=True) for q in chunk]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            generated = model.generate(**batch, do_sample=True, temperature=0.8, top_p=0.95, max_new_tokens=max_new_tokens,
                                       num_return_sequences=n, pad_token_id=tokenizer.pad_token_id)
        decoded = tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        out += [[text.strip() for text in decoded[i * n:(i + 1) * n]] for i in range(len(chunk))]
        print(f"sampled {min(start + batch_prompts, len(questions))}/{len(questions)} prompts", flush=True)
    return out


def build_pairs(questions: list[dict[str, str]], samples: list[list[str]], seed: int = 0) -> list[dict[str, Any]]:
    """Best vs worst sample per question, in the ultrafeedback_binarized layout; a seeded share flipped."""
    rng = random.Random(seed + 1)
    rows = []
    for question, responses in zip(questions, samples, strict=True):
        scored = sorted({r: verifier_score(question["task"], question["answer"], r) for r in responses if r}.items(),
                        key=lambda item: item[1])
        if len(scored) < 2:
            continue
        (worst, low), (best, high) = scored[0], scored[-1]
        flipped = rng.random() < FLIP_SHARE and high > low
        chosen, rejected = (worst, best) if flipped else (best, worst)
        user = {"role": "user", "content": question["prompt"]}
        rows.append({
            "prompt": question["prompt"],
            "chosen": [user, {"role": "assistant", "content": chosen}],
            "rejected": [user, {"role": "assistant", "content": rejected}],
            # a flipped label keeps the higher score on the chosen side: the annotation itself is wrong
            "score_chosen": high,
            "score_rejected": low,
            "task": question["task"],
            "answer": question["answer"],
            "chosen_correct": is_correct(question["task"], question["answer"], chosen),
            "rejected_correct": is_correct(question["task"], question["answer"], rejected),
            "label_flipped": flipped,
        })
    return rows


def ensure_demo(ws: Workspace) -> str:
    """Install the demo dataset and its committed score tables into `ws` (a no-op when present)."""
    # The shipped score tables are keyed to the fingerprint of this import, options included: the demo
    # has no empty responses, and it is imported with the options it was built with.
    report = import_dataset(PAIRS_FILE, DEMO_NAME, ws, replace=True, allow_empty_responses=False)
    copied = 0
    for folder in sorted(SCORES_DIR.glob("*")) if SCORES_DIR.exists() else []:
        target = ws.scores_dir / DEMO_NAME / folder.name
        if not (target / "manifest.json").exists():
            write_with(target, lambda tmp, src=folder: shutil.copytree(src, tmp))
            copied += 1
    return f"{report.summary()}; {copied} score tables installed" if copied else report.summary()


def build(out_dir: Path = DATA_DIR, n: int = 4, seed: int = 0, resample: bool = True) -> None:
    """Regenerate the demo files: sample, verify, pair, then score with the real implicit scorer."""
    pairs_file = out_dir / PAIRS_FILE.name
    if resample or not pairs_file.exists():
        questions = demo_questions(seed)
        rows = build_pairs(questions, sample_responses(questions, n=n, seed=seed), seed=seed)
        payload = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows).encode()
        write_with(pairs_file, lambda tmp: tmp.write_bytes(gzip.compress(payload, mtime=0)))
        print(f"{len(rows)} pairs, {sum(r['label_flipped'] for r in rows)} flipped -> {pairs_file}")
    score_demo(pairs_file, out_dir / SCORES_DIR.name)


def score_demo(pairs_file: Path, scores_out: Path) -> None:
    """Score the demo pairs under the default policy in a scratch workspace; keep the score table."""
    import tempfile

    from marginlens.core.jobs import JobState
    from marginlens.core.scoring.score_spec import ScoreSpec
    from marginlens.core.scoring.score_submit import submit_scoring

    with tempfile.TemporaryDirectory() as scratch:
        ws = Workspace(scratch)
        import_dataset(pairs_file, DEMO_NAME, ws, allow_empty_responses=False)
        handle = submit_scoring(ws, ScoreSpec(dataset=DEMO_NAME, device="cpu"))
        if handle.job is not None:
            status = handle.job.wait(poll=2.0, on_status=lambda s: print(f"scoring {s.done}/{s.total}", flush=True))
            if status.state is not JobState.DONE:
                raise RuntimeError(f"demo scoring ended {status.state}: {handle.job.log_tail()}")
        shutil.rmtree(scores_out, ignore_errors=True)
        for fingerprint in handle.fingerprints.values():
            write_with(scores_out / fingerprint, lambda tmp, fp=fingerprint: shutil.copytree(ws.scores_dir / DEMO_NAME / fp, tmp))
        print(f"score tables {sorted(handle.fingerprints.values())} -> {scores_out}")


if __name__ == "__main__":
    import sys

    build(resample="--rescore-only" not in sys.argv)
