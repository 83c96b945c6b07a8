"""The score job's ETA counts tokens, not pairs: each chunk is scored shortest first, so pairs/s early on
promises the end far too soon. The progress math on uneven work, and the status that carries it."""

from __future__ import annotations

import time

import pytest
from marginlens.core.job_status import JobState, JobStatus
from marginlens.core.scoring.score_progress import WorkCount


def test_worked_example():
    work = WorkCount(total_pairs=1000)
    assert work.left() is None  # nothing tokenized yet: no estimate
    work.planned(100, 3000)
    work.done(40, 600)
    assert work.left() == 29400
    work.done(900, None)  # skipped as already written, never tokenized: neither done work nor left
    assert work.left() == 2400


def _simulate(n_chunks: int = 10, chunk: int = 100, seconds_per_token: float = 1e-3):
    """A job of `n_chunks` chunks whose pairs run shortest first, each pair costing its tokens. Yields, after
    each batch of 10 pairs: (fraction of the work done, ETA by tokens, ETA by pairs, true time left)."""
    lengths = [[200 + (37 * i * (c + 3)) % 1700 for i in range(chunk)] for c in range(n_chunks)]
    total_time = sum(map(sum, lengths)) * seconds_per_token
    work, elapsed, pairs_done, tokens_done = WorkCount(n_chunks * chunk), 0.0, 0, 0
    for ordered in (sorted(c) for c in lengths):
        work.planned(chunk, sum(ordered))
        for start in range(0, chunk, 10):
            tokens = sum(ordered[start : start + 10])
            elapsed += tokens * seconds_per_token
            pairs_done += 10
            tokens_done += tokens
            work.done(10, tokens)
            by_tokens = work.left() / (tokens_done / elapsed)
            by_pairs = (n_chunks * chunk - pairs_done) / (pairs_done / elapsed)
            yield elapsed / total_time, by_tokens, by_pairs, total_time - elapsed


@pytest.mark.parametrize(("n_chunks", "chunk"), [(10, 100), (1, 1000)], ids=["ten-chunks", "one-chunk"])
def test_eta_by_tokens_is_within_25_percent_once_a_tenth_is_done(n_chunks, chunk):
    readings = [r for r in _simulate(n_chunks, chunk) if 0.1 <= r[0] < 0.97]
    assert len(readings) > 50
    for _, by_tokens, _, true_left in readings:
        assert abs(by_tokens - true_left) <= 0.25 * true_left
    # ... where counting pairs is not: it promises the end far too soon.
    worst = max(abs(by_pairs - true_left) / true_left for _, _, by_pairs, true_left in readings)
    assert worst > (0.35 if n_chunks > 1 else 0.6)


def test_status_eta_uses_the_reported_work():
    now = time.time()
    data = {"state": "running", "done": 100, "total": 1000, "rate_since": now - 10, "progress_at": now,
            "rate_base": 0, "extra": {"work_left": 9000.0, "work_rate": 100.0}}
    status = JobStatus.from_dict(data, now=now + 4)
    assert status.state is JobState.RUNNING and status.rate == 10.0  # pairs/s, as shown
    assert status.eta_s == 86.0  # 9,000 tokens at 100 tokens/s, less the 4 s since the last report
    # No work reported (other job kinds, or before the first batch): units of `done` as before.
    for extra in ({}, {"work_left": None, "work_rate": 0.0}):
        assert JobStatus.from_dict({**data, "extra": extra}, now=now).eta_s == 90.0
