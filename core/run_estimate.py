"""How long an experiment or a self-play run will take, as a range, from this workspace's finished jobs.

Rates come from what finished jobs already record (docs/ESTIMATES.md): a train job's result.json holds the
trainer's train_runtime, so its pairs per second (steps x effective batch / train_runtime) and its start-up
(wall time minus train_runtime: process start, imports, model load); an evaluate job's wall time over its
generated-token budget (prompts x max_new_tokens); a score job's pairs per second. Jobs on the same device
count; train jobs of the same model are preferred. With none measured, a stated conservative default per
device stands in, scaled down for a model larger than the 135M-parameter model it was set for. The range
is the slowest to the fastest measured job, widened when there is one job or it trained another model.

After a run, `record_estimate` keeps the estimate beside its job (estimate.json) and `estimate_vs_actual`
sets it against the wall time and the disk the job tree used.
"""

from __future__ import annotations

import calendar
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from marginlens.core.atomic import format_bytes, write_json
from marginlens.core.workspace import Workspace

ESTIMATE_FILE = "estimate.json"
REFERENCE_PARAMS = 135_000_000  # the defaults below were set for a model of this size (SmolLM2-135M)
# (low, high) per device for a ~135M model, used only when no finished job measured the rate: slow ends are
# a 2-core CPU and a small shared GPU, so a first estimate errs long rather than short.
DEFAULTS: dict[str, dict[str, tuple[float, float]]] = {
    "cpu": {"train_pairs": (0.1, 2.0), "gen_tokens": (1.5, 100.0), "score_pairs": (1.0, 20.0), "start_s": (10.0, 60.0)},
    "cuda": {"train_pairs": (4.0, 60.0), "gen_tokens": (150.0, 3000.0), "score_pairs": (40.0, 800.0),
             "start_s": (15.0, 80.0)},
}
UNITS = {"train_pairs": "pairs/s", "gen_tokens": "tokens/s of the max_new_tokens budget",
         "score_pairs": "pairs/s", "start_s": "s"}
LABELS = {"train_pairs": "training", "gen_tokens": "generation", "score_pairs": "scoring",
          "start_s": "start-up per job"}


@dataclass(frozen=True)
class Rate:
    low: float  # the slow end (for start_s: the short end)
    high: float
    source: str  # where it came from, in words

    def text(self, unit: str) -> str:
        return f"{_num(self.low)}-{_num(self.high)} {unit} ({self.source})"


@dataclass(frozen=True)
class Rates:
    device: str
    train_pairs: Rate
    gen_tokens: Rate
    score_pairs: Rate
    start_s: Rate

    def lines(self) -> list[str]:
        return [f"{LABELS[name]} {getattr(self, name).text(unit)}" for name, unit in UNITS.items()]


@dataclass
class Estimate:
    """Seconds and bytes, (low, high), in total and per part."""

    device: str
    seconds: tuple[float, float]
    disk: tuple[int, int] | None
    parts: list[tuple[str, float, float]] = field(default_factory=list)  # (what, low s, high s)
    rates: list[str] = field(default_factory=list)
    untimed: list[str] = field(default_factory=list)  # what the range leaves out (remote LLM requests)

    def lines(self) -> list[str]:
        parts = "; ".join(f"{what} {duration(lo)} to {duration(hi)}" for what, lo, hi in self.parts)
        out = [f"time: about {duration(self.seconds[0])} to {duration(self.seconds[1])} on {self.device} ({parts})"]
        out.extend(f"not timed: {what}" for what in self.untimed)
        out.append("rates used: " + "; ".join(self.rates))
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2g}" if x < 10 else f"{x:.0f}"


def _epoch(stamp: Any) -> float | None:
    try:
        return float(calendar.timegm(time.strptime(str(stamp), "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _wall(status: dict[str, Any]) -> float | None:
    start, end = _epoch(status.get("started")), _epoch(status.get("finished"))
    return end - start if start is not None and end is not None and end >= start else None


def _finished_jobs(ws: Workspace) -> list[tuple[dict[str, Any], dict[str, Any], Path]]:
    """(spec, status, folder) of every job that ended done, reading only small JSON files."""
    out = []
    for spec_path in sorted(ws.jobs_dir.glob("*/spec.json")) if ws.jobs_dir.is_dir() else []:
        status = _read(spec_path.parent / "status.json")
        if status.get("state") == "done":
            out.append((_read(spec_path), status, spec_path.parent))
    return out


def finished_jobs(ws: Workspace) -> int:
    """How many jobs have ended (a result.json each): a cache key for an estimate's rates."""
    return sum(1 for _ in ws.jobs_dir.glob("*/result.json")) if ws.jobs_dir.is_dir() else 0


MIN_BUDGET = 200  # generated tokens below which an evaluation is too short to time (its start-up is all of it)


def _samples(ws: Workspace, device: str, model: str | None) -> dict[str, list[tuple[float, bool]]]:
    """Measured values per rate name: (value, measured on `model`). An evaluation's wall time counts its
    start-up too: the shortest measured train start-up (else the default's short end) is taken off first."""
    found: dict[str, list[tuple[float, bool]]] = {name: [] for name in UNITS}
    jobs = _finished_jobs(ws)
    evaluations = []
    for spec, status, folder in jobs:
        params, kind, wall = spec.get("params") or {}, spec.get("kind"), _wall(status)
        if str(params.get("device") or "").split(":")[0] != device or not wall:
            continue
        if kind == "train":
            result = _read(folder / "result.json")
            runtime = (result.get("metrics") or {}).get("train_runtime")
            trl, settings = params.get("trl") or {}, params.get("settings") or {}
            batch = (int(trl.get("per_device_train_batch_size", 8)) * int(trl.get("gradient_accumulation_steps", 1))
                     * max(1, int(settings.get("num_processes") or 1)))
            steps = int(result.get("global_step") or 0) - int(result.get("resumed_from_step") or 0)
            if isinstance(runtime, (int, float)) and runtime > 0 and steps > 0:
                same = params.get("model") == model
                found["train_pairs"].append((steps * batch / runtime, same))
                found["start_s"].append((max(0.0, wall - runtime), same))
        elif kind == "evaluate":
            generation = params.get("generation") or {}
            total = int(status.get("total") or 0)
            prompts = total // (3 if (params.get("eval") or {}).get("kind") == "judge" else 2)
            budget = prompts * int(generation.get("max_new_tokens") or 0) * (2 if total == 3 * prompts else 1)
            if budget >= MIN_BUDGET:
                evaluations.append((budget, wall))
        elif kind == "score":
            done = int(status.get("done") or 0) - int(status.get("rate_base") or 0)
            if done > 0:
                found["score_pairs"].append((done / wall, False))
    start = min([v for v, _ in found["start_s"]] or [DEFAULTS[device]["start_s"][0]])
    found["gen_tokens"] = [(budget / max(wall - start, wall / 4), False) for budget, wall in evaluations]
    return found


def measured_rates(ws: Workspace, device: str, model: str | None = None, params: int | None = None) -> Rates:
    """The rates this workspace's finished jobs show on `device` ("cpu" or "cuda"), each with its source;
    a default where none measured it. `params`: the model's parameter count, to scale a default by."""
    device = "cuda" if device.startswith("cuda") else "cpu"
    samples = _samples(ws, device, model)
    scale = min(1.0, REFERENCE_PARAMS / params) if params else 1.0
    rates: dict[str, Rate] = {}
    for name in UNITS:
        values = samples[name]
        same = [v for v, s in values if s]
        pick = same or [v for v, _ in values]
        if not pick:
            lo, hi = DEFAULTS[device][name]
            sized = "" if name == "start_s" or scale == 1.0 else f", scaled to a {params / 1e6:,.0f}M model"
            rates[name] = (Rate(lo, hi * (1 / scale if scale < 1 else 1), f"default for {device}{sized}")
                           if name == "start_s" else Rate(lo * scale, hi * scale, f"default for {device}{sized}"))
            continue
        lo, hi = min(pick), max(pick)
        loose = len(pick) == 1 or (name in ("train_pairs", "start_s") and not same)
        if loose:  # one job, or another model: widen the range both ways
            lo, hi = lo / 1.5, hi * 1.5
        whose = f" of {model}" if same else (" of other models" if name in ("train_pairs", "start_s") else "")
        rates[name] = Rate(lo, hi, f"measured: {len(pick)} finished {_kind(name)} job(s){whose} on {device}")
    return Rates(device, **rates)


def _kind(name: str) -> str:
    return {"train_pairs": "train", "start_s": "train", "gen_tokens": "evaluate", "score_pairs": "score"}[name]


# ------------------------------------------------------------------------------------------------
# The parts of a run, in seconds (low, high)
# ------------------------------------------------------------------------------------------------
def training(rates: Rates, pairs_trained: int) -> tuple[float, float]:
    """One train job: start-up plus its pairs (optimizer steps x effective batch) at the training rate."""
    return (rates.start_s.low + pairs_trained / rates.train_pairs.high,
            rates.start_s.high + pairs_trained / rates.train_pairs.low)


def generating(rates: Rates, tokens: int) -> tuple[float, float]:
    """One generating job (an evaluation, a rollout's sampling, a local evolver): start-up plus its token
    budget at the generation rate."""
    return (rates.start_s.low + tokens / rates.gen_tokens.high, rates.start_s.high + tokens / rates.gen_tokens.low)


def scoring(rates: Rates, pairs: int) -> tuple[float, float]:
    return pairs / rates.score_pairs.high, pairs / rates.score_pairs.low


def combine(device: str, rates: Rates, parts: list[tuple[str, int, tuple[float, float]]],
            disk: tuple[int, int] | None, untimed: list[str] | None = None) -> Estimate:
    """`parts`: (what, how many times, (low, high) seconds of one); runs run one after another."""
    low = sum(n * s[0] for _, n, s in parts)
    high = sum(n * s[1] for _, n, s in parts)
    shown = [(f"{what}{f' x{n}' if n > 1 else ''}", n * s[0], n * s[1]) for what, n, s in parts if n]
    return Estimate(device, (low, high), disk, shown, rates.lines(), list(untimed or []))


def model_params(model: str | None) -> int | None:
    """The parameter count of a local model folder (safetensors headers only), else None."""
    from marginlens.core.training.train_disk import model_folder, parameters

    folder = model_folder(model)
    found = parameters(folder) if folder else None
    return found[0] if found else None


# ------------------------------------------------------------------------------------------------
# Estimate vs actual
# ------------------------------------------------------------------------------------------------
def record_estimate(job_dir: Path, estimate: Estimate | dict[str, Any] | None) -> None:
    """Keep the estimate a run was started with (the first one: a resume or a rejoin keeps it)."""
    path = Path(job_dir) / ESTIMATE_FILE
    if estimate is None or path.exists():
        return
    data = estimate.to_dict() if isinstance(estimate, Estimate) else dict(estimate)
    write_json(path, {**data, "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def _job_ids(value: Any, known: set[str]) -> set[str]:
    if isinstance(value, str):
        return {value} if value in known else set()
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return set().union(*(_job_ids(v, known) for v in items)) if items else set()


def _treeformat_bytes(job_dir: Path) -> int:
    """Bytes under the job's folder and every child job its results name (their ids, anywhere in its JSON)."""
    jobs_dir = job_dir.parent
    known = {p.name for p in jobs_dir.iterdir() if p.is_dir()}
    children: set[str] = set()
    for path in (job_dir / "results").glob("*.json"):
        children |= _job_ids(_read(path), known)
    total = 0
    for folder in {job_dir, *(jobs_dir / c for c in children)}:
        total += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return total


def estimate_vs_actual(job_dir: Path) -> list[str]:
    """Lines setting a finished run's recorded estimate against its wall time (its last start to its end)
    and the disk its job tree holds now; [] when no estimate was recorded or it has not finished."""
    estimate = _read(Path(job_dir) / ESTIMATE_FILE)
    status = _read(Path(job_dir) / "status.json")
    wall = _wall(status)
    if not estimate.get("seconds") or wall is None:
        return []
    lo, hi = estimate["seconds"]
    where = "within" if lo <= wall <= hi else "below" if wall < lo else "above"
    out = [f"time: estimated {duration(lo)} to {duration(hi)}, took {duration(wall)} ({where} the estimate"
           f"{'; resumed: counted from its last start' if status.get('resumed') else ''})"]
    used = _treeformat_bytes(Path(job_dir))
    if estimate.get("disk"):
        dlo, dhi = estimate["disk"]
        out.append(f"disk: estimated {format_bytes(dlo)} to {format_bytes(dhi)} at its largest, holds {format_bytes(used)} now")
    else:
        out.append(f"disk: holds {format_bytes(used)} now (not estimated)")
    return out
