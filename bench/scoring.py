"""Benchmark of the implicit scorer on CPU (not a test). Run: .venv/bin/python bench/scoring.py [--pairs N]

Speed, on SmolLM2-135M-Instruct (offline copy) with a realistic length mix (prompt median ~60 tokens,
responses median ~200, long tail to ~1,000), three ways of computing the same sums:
  one-pair float32 loop: two plain forwards per pair (prompt+chosen, prompt+rejected), full log-softmax;
  one-pair bf16 loop:    the same in bfloat16 (log-softmax in float32);
  MarginLens default:    ImplicitScorer as `marginlens score` runs it (dtype auto: core.scoring.models).
Each runs in its own spawned process. Targets: default >= 3x the float32 loop and >= 1.1x the bf16 loop
(on a CPU with native bf16 matmul; elsewhere auto is float32 and the first target is out of reach).

Fidelity, on real HH-RLHF pairs (../shared/data, read by this bench only): the SimPO implicit margins of
a bfloat16 run against a float32 run of the same scorer; targets Spearman >= 0.99, top-40% Jaccard >= 0.95.

--model FOLDER --random-weights measures speed on a model of FOLDER's config with random weights (for a
machine without the SmolLM2 weights: speed does not depend on their values); fidelity needs real ones.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HH_TEST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


def length_mix(n: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) token lengths: log-normal, medians ~60 / ~200, capped at 1,000."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def draw(median: float, sigma: float, cap: int) -> int:
        return int(min(cap, max(4, rng.lognormal(np.log(median), sigma))))

    return [(draw(60, 0.7, 600), draw(200, 0.8, 1000), draw(200, 0.8, 1000)) for _ in range(n)]


def synthetic_pairs(n: int, vocab: int, seed: int = 0):
    import numpy as np
    from marginlens.core.scoring.tokenization import TokenizedPair

    rng = np.random.default_rng(seed + 1)
    return [TokenizedPair(rng.integers(10, vocab, p).tolist(), rng.integers(10, vocab, c).tolist(),
                          rng.integers(10, vocab, r).tolist()) for p, c, r in length_mix(n, seed)]


def one_pair_loop(model, pairs) -> None:
    """The plain way: each response after its prompt, one forward each, log-softmax over every position."""
    import torch

    with torch.inference_mode():
        for pair in pairs:
            for response in (pair.chosen, pair.rejected):
                ids = torch.tensor([pair.prompt + response])
                logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
                start = len(pair.prompt)
                logprobs[start - 1 : -1].gather(1, ids[0, start:, None]).sum()


def marginlens_default(model, tokenizer, pairs) -> None:
    from marginlens.core.scoring.logprobs import ImplicitScorer

    for _ in ImplicitScorer(model, tokenizer).iter_scored(pairs):
        pass


def _child(args: tuple) -> dict:
    method, folder, n, threads = args
    import torch

    torch.set_num_threads(threads)
    from marginlens.core.scoring.models import dtype_for, load_causal_lm

    dtype = {"loop32": "float32", "loop16": "bfloat16", "default": dtype_for("cpu", "auto")}[method]
    model, tokenizer, _ = load_causal_lm(folder, device="cpu", dtype=dtype)
    pairs = synthetic_pairs(n, model.config.vocab_size)
    run = (lambda p: one_pair_loop(model, p)) if method != "default" else (lambda p: marginlens_default(model, tokenizer, p))
    run(pairs[:2])  # warm-up (allocator, kernels)
    start = time.perf_counter()
    run(pairs)
    seconds = time.perf_counter() - start
    # Real tokens of the plain formulation (prompt counted per response): the same work unit for all.
    tokens = sum(2 * len(p.prompt) + len(p.chosen) + len(p.rejected) for p in pairs)
    return {"seconds": seconds, "tokens": tokens, "dtype": dtype}


def matmul_gflops(threads: int, dtype_name: str, size: int = 2048, seconds: float = 1.5) -> float:
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e9


def bench_speed(folder: str, n: int, threads: int) -> None:
    ctx = mp.get_context("spawn")
    results = {}
    for method in ("loop32", "loop16", "default"):
        with ctx.Pool(1) as pool:
            results[method] = pool.apply(_child, ((method, folder, n, threads),))
    names = {"loop32": "one-pair float32 loop", "loop16": "one-pair bf16 loop", "default": "MarginLens default"}
    print(f"\nspeed: {n} pairs, {results['loop32']['tokens']} tokens (prompt counted per response), {threads} threads")
    print(f"  {'method':<24} {'dtype':<9} {'seconds':>8} {'tok/s':>8}")
    for method, r in results.items():
        print(f"  {names[method]:<24} {r['dtype']:<9} {r['seconds']:8.2f} {r['tokens'] / r['seconds']:8.0f}")
    default = results["default"]["seconds"]
    for method, target in (("loop32", 3.0), ("loop16", 1.1)):
        ratio = results[method]["seconds"] / default
        print(f"  default / {names[method]:<22} {ratio:5.2f}x  (target >= {target}x: "
              f"{'met' if ratio >= target else 'NOT met'})")


def hh_pairs(n: int) -> list[dict]:
    from marginlens.core.data.formats import parse_record

    out = []
    with gzip.open(HH_TEST, "rt", encoding="utf-8") as fh:
        for line in fh:
            pair = parse_record("hh-rlhf", json.loads(line), allow_empty=True)
            if pair.chosen.strip() and pair.rejected.strip():
                out.append({"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected})
            if len(out) == n:
                break
    return out


def _ranks(values):
    import numpy as np

    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    return ranks


def bench_fidelity(folder: str, n: int, threads: int, max_length: int) -> None:
    import numpy as np
    import torch
    from marginlens.core.scoring.logprobs import ImplicitScorer
    from marginlens.core.scoring.models import load_causal_lm
    from marginlens.core.selection.margins import simpo_margin

    torch.set_num_threads(threads)
    data = hh_pairs(n)
    args = ([d["prompt"] for d in data], [d["chosen"] for d in data], [d["rejected"] for d in data])
    margins, seconds = {}, {}
    for dtype in ("float32", "bfloat16"):
        model, tokenizer, _ = load_causal_lm(folder, device="cpu", dtype=dtype)
        start = time.perf_counter()
        rows = ImplicitScorer(model, tokenizer, max_length=max_length, max_prompt_length=max_length // 2).score(*args)
        seconds[dtype] = time.perf_counter() - start
        margins[dtype] = simpo_margin([r.chosen_logp for r in rows], [r.chosen_ntok for r in rows],
                                      [r.rejected_logp for r in rows], [r.rejected_ntok for r in rows])
    a, b = margins["float32"], margins["bfloat16"]
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    spearman = float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])
    k = int(0.4 * len(a))
    top_a, top_b = set(np.argsort(-a, kind="stable")[:k]), set(np.argsort(-b, kind="stable")[:k])
    jaccard = len(top_a & top_b) / len(top_a | top_b)
    print(f"\nfidelity: {len(a)} real HH-RLHF pairs (harmless-base test), bfloat16 against float32, "
          f"max length {max_length} ({seconds['float32']:.0f} s and {seconds['bfloat16']:.0f} s)")
    print(f"  implicit margin Spearman  {spearman:.4f}  (target >= 0.99: {'met' if spearman >= 0.99 else 'NOT met'})")
    print(f"  top-40% Jaccard           {jaccard:.4f}  (target >= 0.95: {'met' if jaccard >= 0.95 else 'NOT met'})")
    print(f"  mean |margin difference|  {np.mean(np.abs(a - b)):.2e} nats/token")


def random_copy(folder: str, out: Path) -> str:
    """A model of `folder`'s config and tokenizer with seeded random weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)).save_pretrained(out)
    AutoTokenizer.from_pretrained(folder).save_pretrained(out)
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=24, help="synthetic pairs for the speed runs (0: skip)")
    parser.add_argument("--fidelity-pairs", type=int, default=200, help="real HH pairs for the fidelity run (0: skip)")
    parser.add_argument("--fidelity-max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    parser.add_argument("--model", default=None, help="model folder (default: the offline SmolLM2-135M-Instruct)")
    parser.add_argument("--random-weights", action="store_true", help="speed only, on random weights of --model")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from marginlens.core.scoring.models import cpu_has_native_bf16, smollm2_folder

    folder = args.model or str(smollm2_folder())
    print(f"CPU: native bf16 matmul {'yes' if cpu_has_native_bf16() else 'no'}; 2048^3 matmul "
          f"{matmul_gflops(args.threads, 'float32'):.0f} GFLOP/s float32, "
          f"{matmul_gflops(args.threads, 'bfloat16'):.0f} GFLOP/s bfloat16, {args.threads} threads")
    with tempfile.TemporaryDirectory() as tmp:
        speed_folder = random_copy(folder, Path(tmp) / "random") if args.random_weights else folder
        if args.pairs:
            bench_speed(speed_folder, args.pairs, args.threads)
    if args.fidelity_pairs and not args.random_weights:
        bench_fidelity(folder, args.fidelity_pairs, args.threads, args.fidelity_max_length)


if __name__ == "__main__":
    main()
