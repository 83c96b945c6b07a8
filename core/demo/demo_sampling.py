"""Sample complete responses from the default policy for the demo, and say which ones ended by themselves.

Generation runs its own decoding loop so that a finished sequence leaves the batch at once: the cost is
the tokens the responses really have, not batch x cap, which is what keeps several samples per question
within minutes on a CPU. Sampling is temperature then nucleus (top-p) filtering, as `generate` does it,
drawn from a generator seeded per batch, so a batch's samples do not depend on the batches before it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from marginlens.core.keyed_log import KeyedLog


def _nucleus_sample(logits: Any, temperature: float, top_p: float, generator: Any, head: int = 512) -> Any:
    import torch

    probs = torch.softmax(logits.float() / temperature, dim=-1)
    # A full sort of the vocabulary costs more than the model's step; the nucleus almost always lies
    # within the top `head` tokens, and a row whose nucleus does not is sorted in full (exact either way).
    head = min(head, probs.shape[-1])
    sorted_probs, order = probs.topk(head, dim=-1)
    short = sorted_probs.sum(dim=-1) < top_p
    if bool(short.any()):
        sorted_probs, order = probs.sort(dim=-1, descending=True)
    # keep the smallest prefix whose mass reaches top_p (the most likely token is always kept)
    drop = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    picked = torch.multinomial(sorted_probs, 1, generator=generator)
    return order.gather(-1, picked).squeeze(-1)


def sample_batch(model: Any, tokenizer: Any, prompts: list[str], n: int, *, seed: int, max_new_tokens: int,
                 temperature: float = 0.8, top_p: float = 0.95, eos: int | None = None) -> list[list[dict[str, Any]]]:
    """n samples per prompt: [{"text", "ids", "ended"}], `ended` meaning the end-of-turn token (`eos`, default
    the tokenizer's) was generated within `max_new_tokens`: checked on the ids, not the text."""
    import torch
    from transformers import DynamicCache

    eos = tokenizer.eos_token_id if eos is None else eos
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts for _ in range(n)]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    mask = batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    generator = torch.Generator().manual_seed(seed)
    cache = DynamicCache()
    rows = torch.arange(len(texts))  # which original sequence each live batch row is
    produced: list[list[int]] = [[] for _ in texts]
    ended = [False] * len(texts)
    with torch.inference_mode():
        out = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions,
                    cache=cache, use_cache=True)
        next_pos = positions[:, -1:] + 1
        for _ in range(max_new_tokens):
            tokens = _nucleus_sample(out.logits[:, -1, :], temperature, top_p, generator)
            keep = []
            for i, token in enumerate(tokens.tolist()):
                seq = int(rows[i])
                produced[seq].append(token)
                if token == eos:
                    ended[seq] = True
                else:
                    keep.append(i)
            if not keep:
                break
            if len(keep) < len(rows):
                index = torch.tensor(keep)
                cache.batch_select_indices(index)
                rows, tokens, mask, next_pos = rows[index], tokens[index], mask[index], next_pos[index]
            mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=mask.dtype)], dim=-1)
            out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=next_pos,
                        cache=cache, use_cache=True)
            next_pos = next_pos + 1
    samples = [{"text": tokenizer.decode(ids, skip_special_tokens=True).strip(), "ended": done, "ids": ids}
               for ids, done in zip(produced, ended, strict=True)]
    return [samples[i * n:(i + 1) * n] for i in range(len(prompts))]


def sample_questions(questions: list[dict[str, str]], *, n: int, seed: int, max_new_tokens: int,
                     cache_file: Path, batch_prompts: int = 24, threads: int | None = None,
                     model_spec: str | None = None) -> list[list[dict[str, Any]]]:
    """Samples for every question, batch by batch; each finished batch is kept in `cache_file`, so a killed
    build resumes where it stopped and gives the same samples. `model_spec`: a core.scoring.models spec
    (None: the default policy). `threads` caps torch's CPU threads: on a
    busy machine one thread ran this loop four times faster than two (measured)."""
    import torch
    from marginlens.core.scoring.models import load_causal_lm

    if threads:
        torch.set_num_threads(threads)

    log = KeyedLog(cache_file, key_of=lambda r: r["key"])
    model = tokenizer = None
    out: list[list[dict[str, Any]]] = []
    for start in range(0, len(questions), batch_prompts):
        chunk = [q["prompt"] for q in questions[start:start + batch_prompts]]
        key = json.dumps([seed + start, n, max_new_tokens, chunk])
        record = log.get(key)
        if record is None:
            if model is None:
                model, tokenizer, _ = load_causal_lm(model_spec, device="cpu")
            record = {"key": key, "samples": sample_batch(model, tokenizer, chunk, n, seed=seed + start,
                                                          max_new_tokens=max_new_tokens)}
            log.append(record)
        out += record["samples"]
        print(f"sampled {min(start + batch_prompts, len(questions))}/{len(questions)} questions", flush=True)
    return out
