"""What a job's status.json says, typed: its state and a frozen snapshot of its progress.

  status.json   {"state", "done", "total", "message", "extra", "started", "finished", "heartbeat", "pid",
                 "resumed", "rate_since", "rate_base", "progress_at"}

States are plain strings on disk ("queued", "running", ...): JobState is a str enum, so files written
before it existed read back unchanged and files written now stay byte-compatible with older readers.
"interrupted" is never written: it is what a queued or running status means once no worker holds the
job's lock (killed, machine restarted).

Throughput counts only this worker's own work: `rate_since` is when the worker (re)started and
`rate_base` how much of `done` it did not compute (finished before a resume, or skipped as already
written), so a resumed job does not report the work of its previous run as speed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from marginlens.core.integrity import DamagedFile, read_json_object


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def live(self) -> bool:
        """A worker has it, or is about to."""
        return self in LIVE

    @property
    def finished(self) -> bool:
        """Ended with a recorded outcome (an interrupted job has none: it may be resumed)."""
        return self in FINISHED

    @property
    def resumable(self) -> bool:
        """Resubmitting continues it from what its results folder holds."""
        return self in RESUMABLE

    @classmethod
    def parse(cls, value: object) -> JobState:
        try:
            return cls(value)
        except ValueError:
            # A state this version does not know (a newer writer, a hand-edited file) must not make the
            # whole job unreadable; without a known outcome it is treated like a job that stopped.
            return cls.INTERRUPTED


# How often a follower (the CLI line, a dashboard panel) re-reads status.json; workers write it at most
# every 0.5 s, and a heartbeat every 5 s.
POLL_SECONDS = 1.0

LIVE = frozenset({JobState.QUEUED, JobState.RUNNING})
FINISHED = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
RESUMABLE = frozenset({JobState.CANCELLED, JobState.INTERRUPTED, JobState.FAILED})


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _count(value: object) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


@dataclass(frozen=True)
class JobStatus:
    """One reading of a job's status.json. `rate` is units of `done` per second in this worker run."""

    state: JobState
    done: int = 0
    total: int | None = None
    message: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    heartbeat_at: str | None = None
    pid: int | None = None
    resumed: bool = False
    rate: float | None = None
    eta_s: float | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def live(self) -> bool:
        return self.state.live

    @property
    def finished(self) -> bool:
        return self.state.finished

    @property
    def resumable(self) -> bool:
        return self.state.resumable

    @property
    def error(self) -> str | None:
        return (self.message or "failed") if self.state is JobState.FAILED else None

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, max(0.0, self.done / self.total))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, alive: bool = True, now: float | None = None) -> JobStatus:
        """Tolerates missing and unknown keys. `alive`: whether a worker holds the job (a live state
        without one reads as interrupted)."""
        state = JobState.parse(data.get("state", JobState.QUEUED))
        message = str(data.get("message") or "")
        if state.live and not alive:
            # The last message ("running", "queued: ...") was the dead worker's: saying it again would
            # read as if the job were still going.
            state = JobState.INTERRUPTED
            message = _dead_worker(data) if data.get("pid") is not None else message
        done = _count(data.get("done")) or 0
        total = _count(data.get("total"))
        rate = _rate(data, done)
        extra = data.get("extra")
        eta = None
        left, per_s = _work_left(extra, total - done if total is not None else None, rate)
        if state.live and per_s and left is not None:
            since = (now if now is not None else time.time()) - (_number(data.get("progress_at")) or 0.0)
            eta = max(0.0, left / per_s - max(0.0, since))
        return cls(
            state=state, done=done, total=total, message=message,
            started_at=data.get("started"), finished_at=data.get("finished"), heartbeat_at=data.get("heartbeat"),
            pid=_count(data.get("pid")), resumed=bool(data.get("resumed")), rate=rate, eta_s=eta,
            extra=MappingProxyType(dict(extra) if isinstance(extra, Mapping) else {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, with status.json's key names plus the derived rate and ETA."""
        return {"state": self.state.value, "done": self.done, "total": self.total, "message": self.message,
                "started": self.started_at, "finished": self.finished_at, "heartbeat": self.heartbeat_at,
                "pid": self.pid, "resumed": self.resumed, "rate": self.rate, "eta_s": self.eta_s,
                "extra": dict(self.extra)}


def listed_spec(job_dir: Path) -> dict[str, Any]:
    """spec.json for filtering and sorting a list of jobs: a damaged one reads as {} (a job of no kind), so
    one job's damage hides none of the others; the job's own reads raise DamagedFile."""
    try:
        return read_json_object(job_dir / "spec.json") or {}
    except DamagedFile:
        return {}


def _dead_worker(data: Mapping[str, Any]) -> str:
    pid = _count(data.get("pid"))
    who = f"worker (pid {pid})" if pid is not None else "worker"
    seen = f", last heartbeat {data['heartbeat']}" if data.get("heartbeat") else ""
    return (f"dead: the {who} stopped without recording an outcome{seen} (killed, out of memory, or the "
            "machine restarted); resume continues from what it wrote")


def _work_left(extra: object, units_left: int | None, rate: float | None) -> tuple[float | None, float | None]:
    """(work left, work per second) for the ETA. A job whose units cost unevenly (a score job's pairs, run
    shortest first) reports its work in a unit that costs evenly, as extra "work_left" and "work_rate"
    (tokens and tokens/s); otherwise the ETA counts units of `done`."""
    if isinstance(extra, Mapping):
        left, per_s = _number(extra.get("work_left")), _number(extra.get("work_rate"))
        if left is not None and per_s:
            return left, per_s
    return units_left, rate


def _rate(data: Mapping[str, Any], done: int) -> float | None:
    since, at = _number(data.get("rate_since")), _number(data.get("progress_at"))
    if since is None or at is None or at <= since:
        return None
    counted = done - (_count(data.get("rate_base")) or 0)
    return counted / (at - since) if counted > 0 else None


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 else f"{seconds / 86400:.1f} days"


def progress_line(status: JobStatus, unit: str = "") -> str:
    """"1,500 / 10,000 pairs · 12.3 pairs/s · ETA 00:11:02": what the CLI and the dashboard both show."""
    unit_text = f" {unit}" if unit else ""
    total = f"{status.total:,}" if status.total is not None else "?"
    parts = [f"{status.done:,} / {total}{unit_text}"]
    if status.rate:
        rate = f"{status.rate:,.0f}" if status.rate >= 100 else f"{status.rate:.2g}" if status.rate < 1 else f"{status.rate:.1f}"
        parts.append(f"{rate} {unit or 'units'}/s")
    if status.live:
        parts.append(f"ETA {format_duration(status.eta_s)}")
    return " · ".join(parts)


def _score_details(extra: Mapping[str, Any]) -> list[str]:
    tokens = extra.get("tokens_per_s")
    valid, invalid = _count(extra.get("ratings_valid")), _count(extra.get("ratings_invalid"))
    ratings = f"{valid:,} of {valid + invalid:,} ratings valid" if valid is not None and invalid is not None else ""
    return [f"{tokens:,.0f} tokens/s" if tokens else "— tokens/s", str(extra.get("task") or ""), ratings]


def _audit_details(extra: Mapping[str, Any]) -> list[str]:
    last = extra.get("last_error")
    return [f"{extra.get('calls', 0):,} requests", f"{extra['retries']:,} retries" if "retries" in extra else "",
            f"{extra.get('tokens', 0):,} tokens", f"{extra.get('invalid', 0)} invalid",
            f"{extra.get('failed', 0)} failed", f"last error: {last}" if last else ""]


def _train_details(extra: Mapping[str, Any]) -> list[str]:
    return [f"{name} {extra[key]:.4g}" for key, name in (("loss", "loss"), ("margin", "rewards/margins"),
                                                          ("accuracy", "rewards/accuracies"))
            if _number(extra.get(key)) is not None]


def _experiment_details(extra: Mapping[str, Any]) -> list[str]:
    child = extra.get("child")
    return [str(extra.get("step") or ""), f"{child} {extra.get('child_state', '')}".strip() if child else ""]


def _step_details(extra: Mapping[str, Any]) -> list[str]:
    return [str(extra.get("step") or extra.get("phase") or "")]


_DETAILS = {"score": _score_details, "audit": _audit_details, "train": _train_details,
            "experiment": _experiment_details, "selfplay": _experiment_details, "rollout": _step_details,
            "evolve": _step_details}
UNITS = {"score": "pairs", "audit": "judgments", "train": "steps", "import": "rows", "push": "rows",
         "experiment": "child jobs", "selfplay": "steps", "evolve": "rewrites"}


def unit_of(kind: str | None) -> str:
    """What a kind counts in `done`, for progress lines."""
    return UNITS.get(kind or "", "")


def details(kind: str | None, status: JobStatus) -> str:
    """A kind's own figures from `extra` (what its job function reports), for the CLI line and the panel."""
    lister = _DETAILS.get(kind or "")
    return " · ".join(p for p in lister(status.extra) if p) if lister else ""
