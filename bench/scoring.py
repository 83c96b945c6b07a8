"""Benchmark of the implicit scorer (not a test). Run: .venv/bin/python bench/scoring.py [--pairs N]

On SmolLM2-135M-Instruct (offline copy) and on a tiny Llama, with a realistic length mix (prompt
median ~60 tokens, responses median ~200, long tail to ~1,000), it compares
  (a) one pair at a time: two plain forwards (prompt+chosen, prompt+rejected), full log-softmax;
  (b) the common trainer way: fixed-size padded batches of the concatenated chosen+rejected rows,
      in dataset order, full logits and log-softmax;
  (c) MarginLens's ImplicitScorer (length buckets, shared prompt KV cache, chunked head).
Each method runs in its own process (spawned) so its peak RSS is its own. Prints real tokens/s,
peak RSS, c/a and c/b, the machine's measured float32 matmul FLOP/s and the fraction of it that
each method achieves (model FLOPs on real, unpadded tokens). Targets: c/a >= 3, c/b >= 1.5.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FIXED_BATCH = 8


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
    out = []
    for p, c, r in length_mix(n, seed):
        out.append(TokenizedPair(rng.integers(10, vocab, p).tolist(), rng.integers(10, vocab, c).tolist(),
                                 rng.integers(10, vocab, r).tolist()))
    return out


def method_a(model, pairs) -> None:
    import torch

    with torch.inference_mode():
        for pair in pairs:
            for response in (pair.chosen, pair.rejected):
                ids = torch.tensor([pair.prompt + response])
                logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
                start = len(pair.prompt)
                logprobs[start - 1 : -1].gather(1, ids[0, start:, None]).sum()


def method_b(model, pairs, pad_id: int) -> None:
    import torch

    with torch.inference_mode():
        for start in range(0, len(pairs), FIXED_BATCH):
            batch = pairs[start : start + FIXED_BATCH]
            rows = [p.prompt + c for p in batch for c in (p.chosen, p.rejected)]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad_id)
            mask = torch.zeros_like(ids)
            labels_mask = torch.zeros_like(ids, dtype=torch.bool)
            for i, (row, pair) in enumerate(zip(rows, [p for p in batch for _ in (0, 1)], strict=True)):
                ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
                labels_mask[i, len(pair.prompt) : len(row)] = True
            logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            token_lp = logprobs[:, :-1].gather(2, ids[:, 1:, None])[..., 0]
            (token_lp * labels_mask[:, 1:]).sum(dim=1)


def method_c(model, tokenizer, pairs) -> None:
    from marginlens.core.scoring.logprobs import ImplicitScorer

    scorer = ImplicitScorer(model, tokenizer)
    for _ in scorer.iter_scored(pairs):
        pass


def _child(args: tuple) -> dict:
    method, folder, n, threads = args
    import torch

    torch.set_num_threads(threads)
    from marginlens.core.scoring.models import load_causal_lm

    model, tokenizer, _ = load_causal_lm(folder)
    pairs = synthetic_pairs(n, model.config.vocab_size)
    method_a(model, pairs[:1])  # warm-up (allocator, kernels)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if method == "a":
        method_a(model, pairs)
    elif method == "b":
        method_b(model, pairs, tokenizer.pad_token_id)
    else:
        method_c(model, tokenizer, pairs)
    seconds = time.perf_counter() - start
    from marginlens.core.scoring.logprobs import forward_flops

    # Real tokens of the plain formulation (prompt counted twice), what (a) computes and the same
    # work unit for all: tokens/s is comparable across methods.
    tokens = sum(2 * len(p.prompt) + len(p.chosen) + len(p.rejected) for p in pairs)
    mean_context = sum((len(p.prompt) + max(len(p.chosen), len(p.rejected))) / 2 for p in pairs) / len(pairs)
    return {"seconds": seconds, "tokens": tokens, "flops": forward_flops(model, tokens, mean_context),
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_mb": rss_before / 1024}


def matmul_flops(threads: int, size: int = 1024, seconds: float = 2.0) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start)


def bench_model(label: str, folder: str, n: int, threads: int, peak: float) -> None:
    ctx = mp.get_context("spawn")
    results = {}
    for method in ("a", "b", "c"):
        with ctx.Pool(1) as pool:
            results[method] = pool.apply(_child, ((method, folder, n, threads),))
    print(f"\n{label}: {n} pairs, {results['a']['tokens']} tokens (prompt counted per response)")
    names = {"a": "(a) one pair at a time", "b": f"(b) padded batches of {FIXED_BATCH}", "c": "(c) MarginLens"}
    for method, r in results.items():
        rate = r["tokens"] / r["seconds"]
        print(f"  {names[method]:<28} {r['seconds']:7.2f} s  {rate:9.0f} tok/s  peak RSS {r['rss_mb']:7.0f} MB  "
              f"{100 * r['flops'] / r['seconds'] / peak:5.1f}% of matmul peak")
    c = results["c"]["seconds"]
    print(f"  c/a = {results['a']['seconds'] / c:.2f}x (target >= 3)   c/b = {results['b']['seconds'] / c:.2f}x "
          f"(target >= 1.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=24, help="pairs for SmolLM2 (the tiny model gets 4x)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    parser.add_argument("--skip-smollm2", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    peak = matmul_flops(args.threads)
    print(f"measured float32 matmul: {peak / 1e9:.1f} GFLOP/s on {args.threads} thread(s)")
    from tests.tiny_models import make_tiny_llama

    with tempfile.TemporaryDirectory() as tmp:
        bench_model("tiny Llama (2 layers, hidden 64)", str(make_tiny_llama(Path(tmp) / "tiny")), 4 * args.pairs,
                    args.threads, peak)
    if not args.skip_smollm2:
        from marginlens.core.scoring.models import smollm2_folder

        bench_model("SmolLM2-135M-Instruct", str(smollm2_folder()), args.pairs, args.threads, peak)


if __name__ == "__main__":
    main()
