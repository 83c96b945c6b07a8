"""GPU benchmark of the implicit scorer (not a test): Llama-3-8B architecture, random bf16 weights.

    python bench/gpu_scoring.py               # on a CUDA machine: no download, ~16 GB of GPU memory
    python bench/gpu_scoring.py --tiny        # CPU dry run of the same logic on a tiny config

Builds the model from a config (random init directly on the device), scores a synthetic set with
bench/scoring.py's length mix, and prints tokens/s and model-FLOPs utilisation (MFU) against the
card's *measured* bf16 matmul rate. Target: MFU >= 45%. bench/gpu_check.py runs the same functions
as one section of its report.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LLAMA3_8B = {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 8192,
             "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
TINY = {**LLAMA3_8B, "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2}


def measured_matmul_rate(device: str, dtype, size: int, seconds: float = 3.0) -> float:
    import torch

    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            a @ b
        count += 10
        sync(device)
    return 2 * size**3 * count / (time.perf_counter() - start)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_model(config_dict: dict, device: str, dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**config_dict, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    # Random weights, created on the device in the target dtype: no 32 GB float32 detour on the host.
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


class StubTokenizer:
    """The scorer only needs the pad id here: the pairs below are already token ids."""

    pad_token_id = 0
    eos_token_id = 2
    bos_token_id = 1
    chat_template = "{{ messages }}"  # never rendered: pairs arrive tokenized
    name_or_path = "synthetic"


def time_scoring(model, pairs, peak: float, device: str, token_budget: int | None = None,
                 packing: bool = False, deadline: float | None = None) -> dict:
    """Score `pairs` once (after a warm-up on a sixteenth of them) and measure: tokens/s, pairs/s and MFU.

    MFU counts the tokens the chosen path really computes (a prompt once padded, twice packed, no
    padding) against the measured matmul `peak`; pairs/s is the number to compare paths by. Stops
    at `deadline` (time.monotonic) and reports what it scored by then.
    """
    from marginlens.core.scoring.logprobs import ImplicitScorer, forward_flops
    from marginlens.core.scoring.packing import packed_cost

    scorer = ImplicitScorer(model, StubTokenizer(), token_budget=token_budget, packing=packing)
    for _ in scorer.iter_scored(pairs[: max(1, len(pairs) // 16)]):
        pass
    sync(device)
    start = time.perf_counter()
    done: list[int] = []
    results: dict[int, object] = {}
    for indices, batch in scorer.iter_scored(pairs):
        done += indices
        for i, r in zip(indices, batch, strict=True):
            # the numbers exist and are finite: the run is real
            assert r.chosen_logp == r.chosen_logp and r.rejected_logp == r.rejected_logp
            results[i] = r
        if deadline is not None and time.monotonic() > deadline:
            break
    sync(device)
    seconds = time.perf_counter() - start
    scored = [pairs[i] for i in done]
    computed = sum(packed_cost(p) if scorer.packing else p.n_tokens for p in scored)
    context = sum((len(p.prompt) + max(len(p.chosen), len(p.rejected))) / 2 for p in scored) / max(1, len(scored))
    flops = forward_flops(model, computed, context)
    return {"packing": scorer.packing, "token_budget": scorer.token_budget, "pairs": len(scored),
            "complete": len(scored) == len(pairs), "seconds": seconds, "computed_tokens": computed,
            "tokens_per_s": computed / seconds, "pairs_per_s": len(scored) / seconds,
            "mfu": flops / seconds / peak, "results": results}


def main() -> None:
    import torch

    from bench.scoring import synthetic_pairs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", "--dry-run", action="store_true", help="tiny config on CPU: checks the logic only")
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--token-budget", type=int, default=None, help="default: chosen from free GPU memory")
    parser.add_argument("--packing", choices=("on", "off"), default="off",
                        help="padding-free packing (default off: the padded layout; the scorer packs by default on CUDA in bf16)")
    args = parser.parse_args()

    if args.tiny:
        device, dtype, config, pairs_n, size = "cpu", torch.float32, TINY, min(args.pairs, 16), 512
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run with --tiny for a CPU dry run")
        device, dtype, config, pairs_n, size = "cuda", torch.bfloat16, LLAMA3_8B, args.pairs, 8192
        torch.backends.cuda.matmul.allow_tf32 = True
    peak = measured_matmul_rate(device, dtype, size)
    print(f"device {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}), "
          f"measured {dtype} matmul {peak / 1e12:.2f} TFLOP/s")
    model = build_model(config, device, dtype)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, {dtype}")
    pairs = synthetic_pairs(pairs_n, config["vocab_size"])
    packing = args.packing == "on"
    r = time_scoring(model, pairs, peak, device, args.token_budget, packing)
    print(f"{'packed' if r['packing'] else 'padded'}, token budget {r['token_budget']}: {r['pairs']} pairs, "
          f"{r['computed_tokens']} computed tokens in {r['seconds']:.2f} s: {r['tokens_per_s']:,.0f} tokens/s, "
          f"{r['pairs_per_s']:.1f} pairs/s")
    print(f"MFU {100 * r['mfu']:.1f}% of the measured matmul rate (target >= 45% on a GPU)")
    if device == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
