"""Following a background job from the command line, the same way for every kind of job.

One progress line (a tqdm bar on a terminal, a plain line every few seconds otherwise). Ctrl-C only
detaches: the worker runs in its own session and keeps going, and the message says how to come back
(`marginlens jobs follow JOB_ID`) or stop it (`marginlens jobs cancel JOB_ID`). Stopping is never a
side effect of leaving.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from typing import TextIO

from marginlens.core.errors import MarginLensError
from marginlens.core.job_status import POLL_SECONDS, JobState, JobStatus, details, progress_line, unit_of
from marginlens.core.jobs import Job
from marginlens.core.workspace import Workspace

PLAIN_LINE_SECONDS = 10.0  # a log file or CI output needs a heartbeat, not a line per poll
DETACHED = 130  # the shell's code for "stopped by SIGINT": the command was left, the job was not


def workspace_option(job: Job) -> str:
    """" --workspace ROOT" when the job lives outside the default workspace, so a printed command works."""
    root = job.workspace.root
    return "" if root == Workspace.resolve(None).root else f" --workspace {shlex.quote(str(root))}"


def detach_message(job: Job) -> str:
    option = workspace_option(job)
    return (f"detached: job {job.id} keeps running in the background\n"
            f"  follow it again: marginlens jobs follow {job.id}{option}\n"
            f"  cancel it:       marginlens jobs cancel {job.id}{option}")


def status_text(status: JobStatus, unit: str, detail: str) -> str:
    # a queued job says what it waits for (the training slot, another audit of the dataset)
    waiting = status.message if status.state is JobState.QUEUED and status.message != "starting" else ""
    return " · ".join(part for part in (str(status.state), waiting, progress_line(status, unit), detail) if part)


class _Bar:
    def __init__(self, stream: TextIO):
        from tqdm import tqdm

        # Measured once, with a fallback: tqdm draws nothing on a terminal that reports no size (some ptys).
        size = shutil.get_terminal_size((100, 24))
        self.bar = tqdm(total=None, file=stream, ncols=size.columns, nrows=size.lines, bar_format="|{bar:24}| {desc}")

    def update(self, status: JobStatus, text: str) -> None:
        if status.total and self.bar.total != status.total:
            self.bar.total = status.total
        self.bar.n = min(status.done, status.total or status.done)
        self.bar.set_description_str(text, refresh=False)
        self.bar.refresh()

    def write(self, text: str) -> None:
        self.bar.write(text, file=sys.stdout)

    def close(self) -> None:
        self.bar.close()


class _Plain:
    def __init__(self, stream: TextIO):
        self.stream = stream
        self.last: tuple[JobState, str] | None = None
        self.printed_at = 0.0

    def update(self, status: JobStatus, text: str) -> None:
        now = time.monotonic()
        changed = self.last is None or self.last[0] is not status.state
        if changed or (text != self.last[1] and now - self.printed_at >= PLAIN_LINE_SECONDS):
            print(text, file=self.stream, flush=True)
            self.last, self.printed_at = (status.state, text), now

    def write(self, text: str) -> None:
        print(text, flush=True)

    def close(self) -> None:
        pass


def follow(job: Job, *, lines: Callable[[JobStatus], Iterable[str]] | None = None) -> int:
    """Show `job` until it is no longer live.

    The line carries the kind's own figures (core.job_status.details: tokens/s of a scoring job, ...);
    `lines`: lines to keep on stdout as they appear (a training step each). Returns 0 when the job is
    done; 1 when it failed, was cancelled or was interrupted (its message on stderr, the log tail when
    it failed, and how to resume it unless its status says it kept its outputs and failed on what they
    hold: extra "kept_outputs"); DETACHED after Ctrl-C, with the job still running.
    """
    kind = job.kind
    unit = unit_of(kind)
    line = _Bar(sys.stderr) if sys.stderr.isatty() else _Plain(sys.stderr)
    try:
        while True:
            status = job.status()
            for text in lines(status) if lines else ():
                line.write(text)
            line.update(status, status_text(status, unit, details(kind, status)))
            if not status.live:
                break
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        line.close()
        print(f"\n{detach_message(job)}", file=sys.stderr)
        return DETACHED
    line.close()
    if status.state is JobState.DONE:
        return 0
    print(f"job {job.id} {status.state}: {status.message}", file=sys.stderr)
    if status.state is JobState.FAILED:
        print(job.log_tail(20), file=sys.stderr)
    # a job that wrote its outputs and then failed on what they hold: resuming would only say it again
    if status.resumable and not status.extra.get("kept_outputs"):
        print(f"resume it: marginlens jobs resume {job.id}{workspace_option(job)}", file=sys.stderr)
    return 1


def confirm_start(what: str) -> bool:
    """Ask on the terminal before a long run starts (`what`: "the experiment"); no terminal: say --yes."""
    if not sys.stdin.isatty():
        raise MarginLensError(f"no terminal to confirm on: pass --yes to start {what}")
    answer = input("start it? [y/N] ").strip().lower()
    return answer in ("y", "yes")
