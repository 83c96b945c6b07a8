"""Everything that needs CUDA, checked and timed in one call, one JSON report (not a test).

    python bench/gpu_check.py --out gpu_check.json [--smollm2-gguf PATH] [--data HH.jsonl.gz]
    python bench/gpu_check.py --dry-run           # every section on CPU with tiny configs (tests/test_gpu_check.py)

Sections, each in a child process of its own with a time limit (a crash, a hang or a poisoned CUDA
context loses that section only; one past its limit is killed and recorded as "timeout"):

  environment  torch, CUDA, the GPU; measured bf16 matmul TFLOP/s and copy GB/s
  fidelity     bf16 against float32 through MarginLens's own scorer: per-token log-prob max/mean abs
               difference, margin Spearman, top-40% Jaccard; packed against padded, exactly, in float32
  mfu          bench/gpu_scoring.py's benchmark: Llama-3-8B-shaped random bf16 model, default path
  packing      padding-free packing against padded batches on the same pairs: throughput and agreement
  processes    `marginlens score --processes 2` (both ranks on cuda:0) equal to the 1-process table
  dpo          a few DPO steps through MarginLens's train job in bf16, the loss of every step
  ray          `marginlens score --engine ray` (one GPU actor) against the local engine: equal tables, pairs/s

The whole run keeps under --budget-s (default 405 s: under 7 minutes on an H200); a section that
would start with too little budget left is skipped with the reason. The JSON goes to --out
(default $OUT/gpu_check.json when $OUT is set, else ./gpu_check.json) after every section; a short
table is printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Child process -> sections it reports, and its time limit in seconds (GPU run, dry run).
GROUPS = {
    "environment": (("environment",), 25, 40),
    "fidelity": (("fidelity",), 90, 60),
    "throughput": (("mfu", "packing"), 105, 60),
    "processes": (("processes",), 95, 120),
    "dpo": (("dpo",), 85, 120),
    # the Ray engine on the GPU against the local engine (bench/gpu_check_ray.py); the dry run leaves it out
    # unless --only names it (tests/test_ray_engine.py runs the engine on CPU)
    "ray": (("ray",), 150, 180),
}
MIN_START_S = 20  # a section is not started with less budget than this left


class Report:
    """The child's sections, rewritten atomically after every change: a killed child still leaves its results."""

    def __init__(self, path: Path):
        self.path = path
        self.sections: dict[str, dict] = {}

    def put(self, section: str, **values) -> None:
        self.sections.setdefault(section, {}).update(values)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.sections, indent=1, default=str))
        os.replace(tmp, self.path)


# ------------------------------------------------------------------------------------------------
# The environment section (the others live in bench/gpu_check_sections.py)
# ------------------------------------------------------------------------------------------------
def environment(report: Report, args: argparse.Namespace, deadline: float) -> None:
    import importlib.metadata as md

    import torch

    from bench.gpu_scoring import measured_matmul_rate, sync

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    info = {name: version(name) for name in ("torch", "transformers", "accelerate", "trl", "datasets", "gguf",
                                              "marginlens")}
    info.update(python=sys.version.split()[0], device=args.device, cuda_available=torch.cuda.is_available(),
                cuda=torch.version.cuda, varlen_attention=_has_varlen())
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_count=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1))
    report.put("environment", **info)
    size = 8192 if args.device == "cuda" else 256
    rate = measured_matmul_rate(args.device, torch.bfloat16, size, seconds=2.0 if args.device == "cuda" else 0.3)
    report.put("environment", bf16_matmul_tflops=rate / 1e12, matmul_size=size)
    n = (1 << 28) if args.device == "cuda" else (1 << 22)  # bf16 elements: 512 MiB on the GPU
    src = torch.empty(n, dtype=torch.bfloat16, device=args.device)
    dst = torch.empty_like(src)
    copies, start = 0, time.perf_counter()
    while time.perf_counter() - start < (1.0 if args.device == "cuda" else 0.2):
        dst.copy_(src)
        copies += 1
        sync(args.device)
    seconds = time.perf_counter() - start
    # A copy reads and writes every byte.
    report.put("environment", copy_gbps=2 * src.numel() * src.element_size() * copies / seconds / 1e9)
    if args.device == "cuda":
        host = torch.empty(n, dtype=torch.bfloat16, pin_memory=True)
        start = time.perf_counter()
        for _ in range(5):
            src.copy_(host)
        sync(args.device)
        report.put("environment", host_to_device_gbps=5 * n * 2 / (time.perf_counter() - start) / 1e9)


def _has_varlen() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------------
# Parent: run the groups as children, merge, print
# ------------------------------------------------------------------------------------------------
def run_child(group: str, args: argparse.Namespace, workdir: Path, limit: float) -> tuple[dict, str | None]:
    out = workdir / f"{group}.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", group, "--child-out", str(out),
               "--workdir", str(workdir), "--child-limit", str(limit), *_passed_on(args)]
    log = open(workdir / f"{group}.log", "w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    problem = None
    try:
        code = proc.wait(timeout=limit)
        if code != 0:
            problem = f"child exited with code {code}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its job workers are in sessions of their own and cancel themselves
        proc.wait()
        problem = f"killed after its {limit:.0f} s limit"
    log.close()
    sections = json.loads(out.read_text()) if out.is_file() else {}
    if problem:
        tail = (workdir / f"{group}.log").read_text(errors="replace")[-1500:]
        for name in GROUPS[group][0]:
            entry = sections.setdefault(name, {})
            if entry.get("status") in (None, "running"):
                entry.update(status="timeout" if "killed" in problem else "failed", error=problem, log_tail=tail)
    return sections, problem


def _passed_on(args: argparse.Namespace) -> list[str]:
    passed = ["--dry-run"] if args.dry_run else []
    for flag in ("smollm2_gguf", "data"):
        if getattr(args, flag):
            passed += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return passed


def print_table(report: dict) -> None:
    rows = [("section", "status", "s", "key numbers")]
    for name, entry in report["sections"].items():
        rows.append((name, entry.get("status", "?"), f"{entry.get('seconds', 0):.0f}", _key_numbers(name, entry)))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{width[0]}}  {r[1]:<{width[1]}}  {r[2]:>{width[2]}}  {r[3]}")


KEYS = {
    "environment": ("gpu", "bf16_matmul_tflops", "copy_gbps"),
    "fidelity": ("model_kind", "token_logp_max_abs_diff", "token_logp_mean_abs_diff", "margin_spearman",
                 "top40_jaccard", "packed_vs_padded_fp32_max_abs_diff"),
    "mfu": ("mfu", "tokens_per_s", "pairs_per_s"),
    "packing": ("speedup_pairs_per_s", "kernel", "logp_max_abs_diff"),
    "processes": ("equal_to_one_process", "ranks", "seconds_1", "seconds_2"),
    "dpo": ("steps", "losses"),
    "ray": ("equal_to_local", "pairs_per_s_local", "pairs_per_s_ray", "ray_over_local"),
}


def _key_numbers(name: str, entry: dict) -> str:
    if entry.get("status") not in ("ok", "partial"):
        why = " ".join(str(entry.get("reason") or entry.get("error") or "").split())
        return why if len(why) <= 150 else f"{why[:60]} ... {why[-85:]}"  # the error's kind and its subject
    parts = []
    for key in KEYS.get(name, ()):
        value = entry.get(key)
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, list):
            value = "[" + ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value) + "]"
        parts.append(f"{key}={value}")
    return " ".join(parts)[:200]


def parent(args: argparse.Namespace) -> int:
    started = time.monotonic()
    out = Path(args.out or Path(os.environ.get("OUT", ".")) / "gpu_check.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="marginlens-gpu-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report = {"dry_run": args.dry_run, "budget_s": args.budget_s, "workdir": str(workdir),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sections": {}}
    groups = [g for g in GROUPS if g in args.only.split(",")] if args.only else \
        [g for g in GROUPS if not (args.dry_run and g == "ray")]
    for group in groups:
        names, gpu_limit, dry_limit = GROUPS[group]
        left = args.budget_s - (time.monotonic() - started)
        limit = min(dry_limit if args.dry_run else gpu_limit, left)
        if limit < MIN_START_S:
            for name in names:
                report["sections"][name] = {"status": "skipped", "reason": f"only {left:.0f} s of the budget left"}
            continue
        print(f"[gpu_check] {group}: up to {limit:.0f} s", flush=True)
        sections, _ = run_child(group, args, workdir, limit)
        for name in names:
            report["sections"][name] = sections.get(name, {"status": "failed", "error": "no result"})
        report["seconds"] = time.monotonic() - started
        _write(out, report)
    report["seconds"] = time.monotonic() - started
    _write(out, report)
    logs = out.parent / "gpu_check_logs"  # the children's output, beside the report (the work folder is scratch)
    logs.mkdir(exist_ok=True)
    for log in workdir.glob("*.log"):
        (logs / log.name).write_text(log.read_text(errors="replace")[-200_000:])
    print(f"[gpu_check] report: {out} ({report['seconds']:.0f} s), logs in {logs}")
    print_table(report)
    bad = [n for n, e in report["sections"].items() if e.get("status") not in ("ok", "partial")]
    return 1 if bad else 0


def _write(path: Path, report: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, path)


def child(args: argparse.Namespace) -> int:
    from bench import gpu_check_ray
    from bench import gpu_check_sections as sections

    report = Report(Path(args.child_out))
    # Finish a few seconds inside the limit so that the results are written before the parent kills.
    deadline = time.monotonic() + args.child_limit - (5 if args.dry_run else 12)
    functions = {"environment": environment, "fidelity": sections.fidelity, "throughput": sections.throughput,
                 "processes": sections.processes, "dpo": sections.dpo, "ray": gpu_check_ray.ray_engine}
    names = GROUPS[args.child][0]
    for name in names:
        report.put(name, status="running")
    start = time.monotonic()
    try:
        functions[args.child](report, args, deadline)
    except Exception as exc:
        for name in names:
            if report.sections[name].get("status") == "running":
                report.put(name, status="failed", error=f"{type(exc).__name__}: {exc}",
                           traceback=traceback.format_exc()[-3000:])
    for name in names:
        if report.sections[name].get("status") == "running":
            report.put(name, status="ok")
        report.put(name, seconds=time.monotonic() - start)  # the child's wall time, shared by its sections
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="JSON report path (default $OUT/gpu_check.json, else ./)")
    parser.add_argument("--dry-run", action="store_true", help="every section on CPU with tiny configs")
    parser.add_argument("--smollm2-gguf", default=None, metavar="PATH",
                        help="SmolLM2-135M-Instruct GGUF file (or its folder): fidelity, processes and DPO use it; "
                             "without it a random-init model of its shape")
    parser.add_argument("--data", default=None, metavar="FILE",
                        help="pairs to score and train on (default: ../shared/data/hh-rlhf-harmless-base-test.jsonl.gz "
                             "if present, else synthetic conversations)")
    parser.add_argument("--budget-s", type=float, default=405.0, help="whole run, seconds (default 405)")
    parser.add_argument("--only", default=None, help=f"comma-separated groups of {', '.join(GROUPS)}")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--child", choices=list(GROUPS), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--child-limit", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --dry-run for the CPU dry run")
    args.device = "cpu" if args.dry_run else "cuda"
    return child(args) if args.child else parent(args)


if __name__ == "__main__":
    sys.exit(main())
