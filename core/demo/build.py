"""The built-in demo: real SmolLM2-135M-Instruct samples on questions with checkable answers.

Questions (core.demo.demo_tasks) span arithmetic of three sizes, unit conversions, capitals and counts. Each
gets four sampled responses, then up to twice four more while they are all right or all wrong; a response that
did not end within the generation cap is dropped, so nothing in a pair is cut. A pair is one correct and one
incorrect complete response to the same question, scored by the `answer-match` verifier
(core.experiments.builtin_verifiers: 1.0 correct, a wrong number up to 0.5 for closeness); which of the
question's responses form the pair is drawn so that the chosen one is the shorter in about half of the pairs,
so length does not give the label away. Each question draws a seeded flip with probability 12% before the
questions without a pair are dropped, so the kept pairs' flipped share is what the draw left (39 of 257,
15.2%, in the committed build); a flipped pair's chosen is the incorrect response, its score travelling with
it: the annotation is wrong and the verifier knows. Implicit
margins come from the real scorer, and a held-out eval set of other questions (same task mix, none a
commutative twin of a pair's question) serves the experiments lab.
`python -m marginlens.core.demo.build` regenerates the committed files in core/demo/demo_data/ (minutes on
a CPU; samples are cached, so a killed build resumes); `ensure_demo` installs them into a workspace in
about a second.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from marginlens.core.atomic import write_with
from marginlens.core.data.ingest import import_dataset
from marginlens.core.experiments.eval_set import write_eval_set
from marginlens.core.experiments.verifiers import get_verifier
from marginlens.core.workspace import Workspace

DEMO_NAME = "demo"
DATA_DIR = Path(__file__).resolve().parent / "demo_data"
PAIRS_FILE = DATA_DIR / "demo_pairs.jsonl.gz"
DEMO_EVAL_FILE = DATA_DIR / "demo_eval.jsonl.gz"
SCORES_DIR = DATA_DIR / "scores"
VERIFIER = "answer-match"
FLIP_SHARE = 0.12
SAMPLES_PER_QUESTION = 4
ROUNDS = 3  # the first four samples, then up to two rounds of four more for questions that lack a pair
TOP_UP_SEED = 100_000
BATCH = 24  # questions per sampling batch
MAX_NEW_TOKENS = 128  # generous: the prompts ask for one short sentence, and most replies take < 40 tokens


def _complete(responses: list[dict[str, Any]]) -> list[str]:
    """The distinct texts of the responses that ended by themselves (cut ones never enter a pair)."""
    return sorted({s["text"] for s in responses if s["ended"] and s["text"]})


def _split(question: dict[str, str], responses: list[dict[str, Any]]) -> tuple[dict[str, float], list[str], list[str]]:
    verifier = get_verifier(VERIFIER)
    score = {text: verifier.score(text, question) for text in _complete(responses)}
    return score, [t for t in score if score[t] == 1.0], [t for t in score if score[t] < 1.0]


def lacks_a_pair(question: dict[str, str], responses: list[dict[str, Any]]) -> bool:
    _, correct, wrong = _split(question, responses)
    return not correct or not wrong


def build_pairs(questions: list[dict[str, str]], samples: list[list[dict[str, Any]]],
                seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Pairs in the ultrafeedback_binarized layout, and the numbers that describe how they were made.

    Correct answers tend to be the short ones, so a pair drawn at random would let length give the label
    away. Where a question's responses allow both, the pair is drawn with the chosen response shorter or
    longer, whichever brings the share of pairs whose chosen response is the shorter closer to one half
    (flipped labels counted as they end up); a question that allows one way only takes that way."""
    rng = random.Random(seed + 1)
    rows: list[dict[str, Any]] = []
    stats: dict[str, Any] = {"questions": len(questions), "cut": 0, "complete": Counter(), "correct": Counter(),
                             "dropped": Counter()}
    chosen_shorter = 0
    for question, responses in zip(questions, samples, strict=True):
        task = question["task"]
        stats["cut"] += sum(not s["ended"] for s in responses)
        score, correct, wrong = _split(question, responses)
        done = [s for s in responses if s["ended"] and s["text"]]
        stats["complete"][task] += len(done)
        stats["correct"][task] += sum(score[s["text"]] == 1.0 for s in done)
        flipped = rng.random() < FLIP_SHARE
        if not correct or not wrong:
            stats["dropped"][task] += 1
            continue
        options = [(c, w) for c in correct for w in wrong if len(c) != len(w)] or [(c, w) for c in correct for w in wrong]
        # chosen is the shorter when the correct one is shorter, unless the label is flipped
        want_shorter = chosen_shorter < 0.5 * (len(rows) + 1)
        wanted = [(c, w) for c, w in options if ((len(c) < len(w)) != flipped) == want_shorter]
        good, bad = rng.choice(wanted or options)
        chosen, rejected = (bad, good) if flipped else (good, bad)
        chosen_shorter += len(chosen) < len(rejected)
        user = {"role": "user", "content": question["prompt"]}
        rows.append({
            "prompt": question["prompt"],
            "chosen": [user, {"role": "assistant", "content": chosen}],
            "rejected": [user, {"role": "assistant", "content": rejected}],
            # the scores travel with the responses: a flipped pair's explicit margin is negative
            "score_chosen": score[chosen],
            "score_rejected": score[rejected],
            "task": task,
            "answer": question["answer"],
            "chosen_correct": score[chosen] == 1.0,
            "rejected_correct": score[rejected] == 1.0,
            "label_flipped": flipped,
        })
    return rows, stats


def describe(rows: list[dict[str, Any]], stats: dict[str, Any]) -> list[str]:
    """The build's numbers, one line each (printed by the build, quoted in docs/DASHBOARD.md)."""
    def length(row: dict[str, Any], side: str) -> int:
        return len(row[side][-1]["content"])

    shorter = sum(length(r, "chosen") < length(r, "rejected") for r in rows)
    lines = [f"{len(rows)} pairs from {stats['questions']} questions; {sum(stats['dropped'].values())} questions "
             f"dropped (no correct or no incorrect complete response): {dict(sorted(stats['dropped'].items()))}",
             f"{stats['cut']} responses hit the {MAX_NEW_TOKENS}-token cap without ending and were dropped",
             f"chosen is the shorter response in {shorter}/{len(rows)} pairs ({shorter / max(len(rows), 1):.0%})",
             f"{sum(r['label_flipped'] for r in rows)} labels flipped"]
    for task in sorted(stats["complete"]):
        n = stats["complete"][task]
        lines.append(f"  {task}: {stats['correct'][task]}/{n} complete responses correct "
                     f"({stats['correct'][task] / max(n, 1):.0%}); {sum(r['task'] == task for r in rows)} pairs")
    return lines


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


def sample_demo(questions: list[dict[str, str]], *, n: int, seed: int, cache: Path, rounds: int = ROUNDS,
                threads: int | None = 1) -> list[list[dict[str, Any]]]:
    """n samples per question; then, for up to `rounds - 1` more rounds, n more for each question whose
    samples so far are all right or all wrong (harder questions then form a pair more often). Each round
    goes batch by batch of the first, so a batch's samples depend on its own questions only."""
    from marginlens.core.demo.demo_sampling import sample_questions

    samples = sample_questions(questions, n=n, seed=seed, max_new_tokens=MAX_NEW_TOKENS, cache_file=cache,
                               batch_prompts=BATCH, threads=threads)
    for round_ in range(1, rounds):
        topped = 0
        for start in range(0, len(questions), BATCH):
            lacking = [i for i in range(start, min(start + BATCH, len(questions)))
                       if lacks_a_pair(questions[i], samples[i])]
            more = sample_questions([questions[i] for i in lacking], n=n, seed=seed + round_ * TOP_UP_SEED + start,
                                    max_new_tokens=MAX_NEW_TOKENS, cache_file=cache, batch_prompts=BATCH,
                                    threads=threads)
            for i, extra in zip(lacking, more, strict=True):
                samples[i] = samples[i] + extra
            topped += len(lacking)
        print(f"round {round_ + 1}: {topped} questions lacked a correct or an incorrect response; {n} more samples each")
    return samples


def build(out_dir: Path = DATA_DIR, n: int = SAMPLES_PER_QUESTION, seed: int = 0, resample: bool = True,
          samples_cache: Path | None = None, threads: int | None = 1) -> None:
    """Regenerate the demo files: sample, verify, pair, write the held-out eval set, then score with the
    real implicit scorer."""
    from marginlens.core.demo.demo_tasks import demo_questions

    pairs_file = out_dir / PAIRS_FILE.name
    if resample or not pairs_file.exists():
        questions, held_out = demo_questions(seed)
        cache = samples_cache or Path(tempfile.gettempdir()) / "marginlens-demo-samples.jsonl"
        samples = sample_demo(questions, n=n, seed=seed, cache=cache, threads=threads)
        rows, stats = build_pairs(questions, samples, seed=seed)
        payload = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows).encode()
        write_with(pairs_file, lambda tmp: tmp.write_bytes(gzip.compress(payload, mtime=0)))
        write_eval_set(out_dir / DEMO_EVAL_FILE.name, held_out)
        print("\n".join(describe(rows, stats)) + f"\n-> {pairs_file}, {len(held_out)} held-out questions")
    score_demo(pairs_file, out_dir / SCORES_DIR.name)


def score_demo(pairs_file: Path, scores_out: Path) -> None:
    """Score the demo pairs under the default policy in a scratch workspace; keep the score table."""
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


def flipped_in_selections(ws: Workspace, metrics: tuple[str, ...] = ("map", "explicit", "implicit", "random"),
                          ratio: float = 0.4) -> dict[str, tuple[int, int]]:
    """metric -> (flipped pairs in its top `ratio`, k) on the installed demo, under the default policy."""
    from marginlens.core.selection.margins import default_scorers, load_margins
    from marginlens.core.selection.select import SelectionSpec, select

    margins = load_margins(ws, DEMO_NAME, policy_fp=default_scorers(ws, DEMO_NAME)["policy"])
    flipped = {row["pair_id"] for row in ws.load_pairs(DEMO_NAME) if json.loads(row["source_json"])["label_flipped"]}
    out = {}
    for metric in metrics:
        chosen = select(margins, SelectionSpec(metric=metric, ratio=ratio))
        out[metric] = (sum(pid in flipped for pid in chosen.pair_ids), chosen.k)
    return out


def report_selections() -> list[str]:
    """The share of flipped labels in each metric's top 40% of the committed demo."""
    with tempfile.TemporaryDirectory() as scratch:
        ws = Workspace(scratch)
        ensure_demo(ws)
        found = flipped_in_selections(ws)
        n_flipped = sum(json.loads(row["source_json"])["label_flipped"] for row in ws.load_pairs(DEMO_NAME))
        n = len(ws.load_pairs(DEMO_NAME))
    lines = [f"flipped labels overall: {n_flipped}/{n} ({n_flipped / n:.1%}); in each metric's top 40%:"]
    lines += [f"  {metric}: {hits}/{k} ({hits / k:.1%})" for metric, (hits, k) in found.items()]
    return lines


if __name__ == "__main__":
    import sys

    build(resample="--rescore-only" not in sys.argv)
    print("\n".join(report_selections()))
