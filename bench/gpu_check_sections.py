"""The sections of bench/gpu_check.py after `environment`: each takes (report, args, deadline), puts its
numbers into `report` as it goes, and stops early (status "partial") at `deadline` (time.monotonic).

The small model (fidelity, processes, dpo) is SmolLM2-135M-Instruct converted from the GGUF given
with --smollm2-gguf, else a random-init Llama of SmolLM2's shape with a locally trained tokenizer
(tests/tiny_models.py); the dry run uses the tests' tiny Llama. The report says which.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HH = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
SMOLLM2_SHAPE = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                 "num_key_value_heads": 3, "max_position_embeddings": 8192, "rope_theta": 100000.0,
                 "tie_word_embeddings": True}


def _tiny_models() -> types.ModuleType:
    """tests/tiny_models.py, also where pytest is not installed (it only decorates fixtures with it)."""
    sys.path.insert(0, str(REPO / "tests"))
    try:
        import pytest  # noqa: F401
    except ImportError:
        sys.modules["pytest"] = types.SimpleNamespace(fixture=lambda *a, **k: (lambda f: f))  # type: ignore[assignment]
    import tiny_models

    return tiny_models


def small_model(args: Any) -> tuple[Path, str]:
    """(model folder, what it is), made once per run in the work folder."""
    from marginlens.core.atomic import atomic_path

    folder = Path(args.workdir) / "small-model"
    about = folder / "gpu-check-model.json"
    if about.is_file():
        return folder, json.loads(about.read_text())["kind"]
    why = "" if args.dry_run else "no --smollm2-gguf given; "
    if args.smollm2_gguf:
        try:
            return folder, _from_gguf(Path(args.smollm2_gguf), folder)
        except Exception as exc:  # no such file, no gguf package, ...: the random model below, saying why
            why = f"--smollm2-gguf {args.smollm2_gguf} unusable ({type(exc).__name__}: {exc}); "
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        if args.dry_run:
            _tiny_models().make_tiny_llama(tmp)
            kind = why + "tiny random-init Llama (dry run)"
        else:
            import torch
            from transformers import LlamaConfig, LlamaForCausalLM

            tokenizer = _tiny_models().build_tokenizer(tmp)
            config = LlamaConfig(vocab_size=len(tokenizer), **SMOLLM2_SHAPE, bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            torch.manual_seed(0)
            LlamaForCausalLM(config).save_pretrained(tmp)
            kind = why + "random-init Llama of SmolLM2-135M's shape"
        (tmp / "gpu-check-model.json").write_text(json.dumps({"kind": kind}))
    return folder, kind


def _from_gguf(path: Path, folder: Path) -> str:
    from marginlens.core.atomic import atomic_path
    from marginlens.core.scoring import models

    gguf = path if path.is_file() else next(path.glob("*.gguf"), None)
    if gguf is None:
        raise FileNotFoundError(f"no .gguf file at {path}")
    kind = f"SmolLM2-135M-Instruct from {gguf.name}"
    with atomic_path(folder) as tmp:
        models._convert_gguf(gguf, tmp)  # the product's own conversion (core.scoring.models)
        (tmp / "gpu-check-model.json").write_text(json.dumps({"kind": kind}))
    return kind


def pairs_dataset(args: Any, ws: Any, n: int) -> tuple[list[dict], str]:
    """Import n pairs into workspace `ws` as dataset "pairs"; (their rows, where they came from)."""
    from marginlens.core.data.ingest import import_dataset

    # The dry run keeps to short synthetic conversations unless given data: it has to be quick on a small CPU.
    source = Path(args.data) if args.data else HH if HH.is_file() and not args.dry_run else None
    path = Path(args.workdir) / f"pairs-{n}.jsonl"
    if source is not None:
        opener = gzip.open if source.name.endswith(".gz") else open
        with opener(source, "rt", encoding="utf-8") as fh:
            lines = [line for _, line in zip(range(n), fh, strict=False)]
        what = f"{source.name}, first {len(lines)} pairs"
    else:
        lines = [json.dumps(r) + "\n" for r in _tiny_models().conversational_records(n, seed=1, scores=False)]
        what = f"{n} synthetic conversations (tests/tiny_models.py)"
    path.write_text("".join(lines), encoding="utf-8")
    import_dataset(path, name="pairs", workspace=ws)
    return ws.load_pairs("pairs").select_columns(["pair_id", "prompt", "chosen", "rejected"]).to_list(), what


def _args_of(rows: list[dict]) -> tuple[list, list, list]:
    return [r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows]


# ------------------------------------------------------------------------------------------------
# fidelity: bf16 against float32, and packed against padded, through the product's scorer
# ------------------------------------------------------------------------------------------------
def token_logps(scorer: Any, pairs: list[Any]) -> list[float]:
    """Every scored response token's log-prob, one unpadded sequence at a time, with the scorer's own head."""
    import torch

    out: list[float] = []
    with torch.inference_mode():
        for p in pairs:
            for resp, skip in ((p.chosen, p.chosen_skip), (p.rejected, p.rejected_skip)):
                ids = torch.tensor([p.prompt + resp], device=scorer.device)
                hidden = scorer.base(input_ids=ids).last_hidden_state[0]
                start = len(p.prompt)
                positions = torch.arange(start + skip - 1, start + len(resp) - 1, device=scorer.device)
                out += scorer._token_logps(hidden[positions], ids[0, positions + 1]).tolist()
    return out


def _margins(results: list[Any]) -> Any:
    import numpy as np
    from marginlens.core.selection.margins import simpo_margin

    return np.array([simpo_margin(r.chosen_logp, r.chosen_ntok, r.rejected_logp, r.rejected_ntok) for r in results],
                    dtype=float)


def agreement(reference: list[Any], other: list[Any], top: float = 0.4) -> dict[str, float]:
    """How far `other`'s sums and SimPO margins are from `reference`'s: Spearman, top-40% Jaccard, max diff."""
    import numpy as np
    import pandas as pd

    a, b = _margins(reference), _margins(other)
    k = max(1, int(top * len(a)))
    # The stable argsort, as core.selection.select breaks ties.
    top_a = set(np.argsort(-a, kind="stable")[:k].tolist())
    top_b = set(np.argsort(-b, kind="stable")[:k].tolist())
    sums = np.array([[r.chosen_logp, r.rejected_logp] for r in reference])
    other_sums = np.array([[r.chosen_logp, r.rejected_logp] for r in other])
    return {"margin_spearman": float(pd.Series(a).corr(pd.Series(b), method="spearman")),
            "top40_jaccard": len(top_a & top_b) / len(top_a | top_b),
            "sum_logp_max_abs_diff": float(np.abs(sums - other_sums).max()),
            "margin_max_abs_diff": float(np.abs(a - b).max()),
            "ntok_equal": all((r.chosen_ntok, r.rejected_ntok) == (o.chosen_ntok, o.rejected_ntok)
                              for r, o in zip(reference, other, strict=True))}


def fidelity(report: Any, args: Any, deadline: float) -> None:
    import numpy as np
    from marginlens.core.scoring import packing
    from marginlens.core.scoring.logprobs import ImplicitScorer
    from marginlens.core.scoring.models import load_causal_lm
    from marginlens.core.workspace import Workspace

    folder, kind = small_model(args)
    n = 12 if args.dry_run else 256
    rows, data = pairs_dataset(args, Workspace(Path(args.workdir) / "ws-fidelity"), n)
    report.put("fidelity", model_kind=kind, data=data, pairs=len(rows), max_length=1024)
    options = {"max_length": 1024, "max_prompt_length": 512}
    scored: dict[str, list[Any]] = {}
    default_layouts: dict[str, str] = {}
    for dtype in ("float32", "bfloat16"):
        if time.monotonic() > deadline:
            report.put("fidelity", status="failed", error=f"out of time before the {dtype} runs")
            return
        model, tokenizer, _ = load_causal_lm(str(folder), device=args.device, dtype=dtype)
        default = ImplicitScorer(model, tokenizer, **options)  # the layout a plain `marginlens score` picks
        default_layouts[dtype] = "packed" if default.packing else "tree" if default.tree else "padded"
        for packed in (False, True):
            scorer = ImplicitScorer(model, tokenizer, packing=packed, **options)
            start = time.perf_counter()
            scored[f"{dtype}-{'packed' if packed else 'padded'}"] = scorer.score(*_args_of(rows))
            report.put("fidelity", **{f"seconds_{dtype}_{'packed' if packed else 'padded'}":
                                      time.perf_counter() - start})
        tokenized = scorer.tokenize(*_args_of(rows[: 8 if args.dry_run else 64]))
        scored[f"{dtype}-tokens"] = token_logps(scorer, tokenized)
        del model, scorer
    diff = np.abs(np.array(scored["float32-tokens"]) - np.array(scored["bfloat16-tokens"]))
    exact = agreement(scored["float32-padded"], scored["float32-packed"])
    report.put(
        "fidelity", scored_tokens_compared=len(diff), token_logp_max_abs_diff=float(diff.max()),
        token_logp_mean_abs_diff=float(diff.mean()),
        **agreement(scored["float32-padded"], scored["bfloat16-packed" if args.device == "cuda" else "bfloat16-padded"]),
        bf16_path="packed (the CUDA default)" if args.device == "cuda" else "padded (the CPU default)",
        default_layouts=default_layouts,
        packed_vs_padded_fp32_max_abs_diff=exact["sum_logp_max_abs_diff"],
        packed_vs_padded_fp32_ntok_equal=exact["ntok_equal"],
        bf16_padded_vs_fp32=agreement(scored["float32-padded"], scored["bfloat16-padded"]),
        bf16_packed_vs_fp32=agreement(scored["float32-padded"], scored["bfloat16-packed"]),
        packed_kernel_calls=dict(packing.KERNEL_CALLS), varlen_failure=packing.varlen_failure(),
    )
    if not (exact["ntok_equal"] and exact["sum_logp_max_abs_diff"] < 1e-2):
        report.put("fidelity", status="failed", error="packed float32 log-probs differ from the padded ones")


# ------------------------------------------------------------------------------------------------
# mfu and packing: the Llama-3-8B-shaped benchmark of bench/gpu_scoring.py, both paths
# ------------------------------------------------------------------------------------------------
def throughput(report: Any, args: Any, deadline: float) -> None:
    import numpy as np
    import torch
    from marginlens.core.scoring import packing
    from marginlens.core.scoring.logprobs import pair_cost, plan_batches

    from bench.gpu_scoring import LLAMA3_8B, TINY, build_model, measured_matmul_rate, time_scoring
    from bench.scoring import synthetic_pairs

    config, size = (TINY, 512) if args.dry_run else (LLAMA3_8B, 8192)
    torch.backends.cuda.matmul.allow_tf32 = True
    peak = measured_matmul_rate(args.device, torch.bfloat16, size, seconds=0.3 if args.dry_run else 1.5)
    start = time.perf_counter()
    model = build_model(config, args.device, torch.bfloat16)
    pairs = synthetic_pairs(4 if args.dry_run else 512, config["vocab_size"])
    info = {"model": "Llama-3-8B shape, random bf16" if not args.dry_run else "tiny Llama, random bf16 (dry run)",
            "params_b": sum(p.numel() for p in model.parameters()) / 1e9, "build_seconds": time.perf_counter() - start,
            "peak_tflops": peak / 1e12, "pairs_planned": len(pairs)}
    report.put("mfu", **info)
    half = (deadline - time.monotonic()) / 2
    runs = {}
    for name, packed in (("packed", True), ("padded", False)):
        r = time_scoring(model, pairs, peak, args.device, packing=packed, deadline=time.monotonic() + half - 5)
        runs[name] = r
        summary = {("scoring_seconds" if k == "seconds" else k): v for k, v in r.items() if k != "results"}
        report.put("packing", **{name: summary})
        if packed == (args.device == "cuda"):  # MFU is reported for the device's default path
            report.put("mfu", **summary, path=name, status="ok" if r["complete"] else "partial")
    both = sorted(set(runs["packed"]["results"]) & set(runs["padded"]["results"]))
    a = np.array([[runs["packed"]["results"][i].chosen_logp, runs["packed"]["results"][i].rejected_logp] for i in both])
    b = np.array([[runs["padded"]["results"][i].chosen_logp, runs["padded"]["results"][i].rejected_logp] for i in both])
    padded = sum(len(batch) * (max(len(pairs[i].prompt) for i in batch)
                               + 2 * max(max(len(pairs[i].chosen), len(pairs[i].rejected)) for i in batch))
                 for batch in plan_batches(pairs, runs["padded"]["token_budget"]))
    report.put("packing", speedup_pairs_per_s=runs["packed"]["pairs_per_s"] / runs["padded"]["pairs_per_s"],
               compared_pairs=len(both), logp_max_abs_diff=float(np.abs(a - b).max()) if both else None,
               logp_mean_abs=float(np.abs(b).mean()) if both else None,
               padded_plan_padding_fraction=1 - sum(pair_cost(p) for p in pairs) / padded,
               kernel="varlen_flash" if packing.KERNEL_CALLS["varlen_flash"] else "sdpa_per_document",
               kernel_calls=dict(packing.KERNEL_CALLS), varlen_failure=packing.varlen_failure(),
               status="ok" if runs["packed"]["complete"] and runs["padded"]["complete"] else "partial")
    if args.device == "cuda":
        report.put("mfu", peak_gpu_memory_gib=torch.cuda.max_memory_allocated() / 2**30)


# ------------------------------------------------------------------------------------------------
# processes: the real CLI, one process against two
# ------------------------------------------------------------------------------------------------
def _cli(args: list[str], deadline: float) -> tuple[float, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "marginlens.core.cli", *args], capture_output=True, text=True,
                          env=env, timeout=max(5.0, deadline - time.monotonic()))
    if proc.returncode != 0:
        raise RuntimeError(f"marginlens {' '.join(args[:2])} exited {proc.returncode}: {proc.stdout[-1500:]}"
                           f"{proc.stderr[-1500:]}")
    return time.perf_counter() - start, proc.stdout


def scored_table(ws: Any, command: list[str], deadline: float) -> tuple[float, str, dict[str, dict]]:
    """Run a `marginlens score` command on the "pairs" dataset: (seconds, the policy table's fingerprint, its rows
    by pair_id). A timeout or Ctrl-C cancels its jobs, whose workers run on in sessions of their own."""
    from marginlens.core.jobs import list_jobs
    from marginlens.core.scoring.score_tables import load_score_table

    try:
        seconds, stdout = _cli(command, deadline)
    except BaseException:
        for job in list_jobs(ws, "score"):
            job.cancel()
        raise
    fingerprint = next(line.split(":", 1)[1].split()[0] for line in stdout.splitlines()
                       if line.strip().startswith("policy:"))
    return seconds, fingerprint, {r["pair_id"]: r for r in load_score_table(ws, "pairs", fingerprint).to_pylist()}


def processes(report: Any, args: Any, deadline: float) -> None:
    from marginlens.core.jobs import list_jobs
    from marginlens.core.workspace import Workspace

    folder, kind = small_model(args)
    n = 16 if args.dry_run else 512
    tables, ranks = {}, None
    for count in (1, 2):
        ws = Workspace(Path(args.workdir) / f"ws-processes-{count}")
        rows, data = pairs_dataset(args, ws, n)
        command = ["score", "pairs", "--workspace", str(ws.root), "--policy", str(folder), "--device", args.device,
                   "--max-length", "512", "--max-prompt-length", "256", "--processes", str(count)]
        seconds, fingerprint, tables[count] = scored_table(ws, command, deadline)
        job = list_jobs(ws, "score")[0]
        report.put("processes", **{f"seconds_{count}": seconds}, model_kind=kind, data=data, pairs=len(rows))
        if count == 2:
            parts = (job.results_dir / fingerprint).glob("part-rank*")
            ranks = sorted({p.name.split("-")[1] for p in parts})
            log = job.log_path.read_text(errors="replace")
            report.put("processes", ranks=ranks, log_devices=sorted({w for w in log.replace(",", " ").split()
                                                                      if w.startswith(("cuda", "cpu"))}))
    one, two = tables[1], tables[2]
    # Other batch shapes on each rank: equal up to float32 rounding on CPU, bf16 rounding on CUDA (relative:
    # a long response's sum carries more of it).
    rel, absolute = (1e-5, 1e-3) if args.device == "cpu" else (0.01, 0.5)
    worst = 0.0
    for k in one:
        for side in ("chosen_logp", "rejected_logp"):
            excess = abs(one[k][side] - two[k][side]) / (absolute + rel * abs(one[k][side]))
            worst = max(worst, excess)
    diff = max(abs(one[k][s] - two[k][s]) for k in one for s in ("chosen_logp", "rejected_logp"))
    same_counts = all((one[k]["chosen_ntok"], one[k]["rejected_ntok"]) == (two[k]["chosen_ntok"], two[k]["rejected_ntok"])
                      for k in one)
    equal = sorted(one) == sorted(two) and same_counts and worst <= 1
    report.put("processes", equal_to_one_process=equal, logp_max_abs_diff=diff,
               tolerance=f"{absolute} + {rel} * |logp|")
    if not equal or ranks != ["rank0", "rank1"]:
        report.put("processes", status="failed", error=f"merged table equal: {equal}; ranks that wrote parts: {ranks}")


# ------------------------------------------------------------------------------------------------
# dpo: a few steps through the train job
# ------------------------------------------------------------------------------------------------
def dpo(report: Any, args: Any, deadline: float) -> None:
    from marginlens.core.training import runs
    from marginlens.core.workspace import Workspace

    folder, kind = small_model(args)
    ws = Workspace(Path(args.workdir) / "ws-dpo")
    rows, data = pairs_dataset(args, ws, 32)
    export = Path(args.workdir) / "dpo-export.jsonl"
    export.write_text("".join(json.dumps({"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": r["chosen"]}],
                                          "rejected": [{"role": "assistant", "content": r["rejected"]}]}) + "\n"
                              for r in rows), encoding="utf-8")
    steps = 2 if args.dry_run else 4
    overrides = {"max_steps": steps, "per_device_train_batch_size": 4, "effective_batch_size": 4,
                 "max_length": 128 if args.dry_run else 512, "learning_rate": 5e-6, "lr_scheduler_type": "constant",
                 "warmup_steps": 0, "save_steps": 1000, "model_dtype": "float32" if args.dry_run else "bfloat16"}
    job = runs.submit_training(ws, export, "dpo", model=str(folder), device=args.device, overrides=overrides)
    report.put("dpo", model_kind=kind, data=data, job=job.id, settings=overrides)
    try:
        status = job.wait(poll=0.5, timeout=max(5.0, deadline - time.monotonic()))
    except TimeoutError:
        job.cancel()
        status = job.status()
    metrics = runs.read_metrics(job)
    losses = [m["loss"] for m in metrics if "loss" in m]
    report.put("dpo", state=str(status.state), steps=len(losses), losses=losses,
               tokens_per_s=[m.get("tokens_per_s") for m in metrics],
               margins=[m.get("rewards/margins") for m in metrics])
    if str(status.state) != "done" or len(losses) != steps:
        report.put("dpo", status="failed", error=f"job {status.state}: {status.error or ''}",
                   log_tail=job.log_tail(30))
