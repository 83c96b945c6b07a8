"""The judge client against a real scripted HTTP server: what is retried, how long it waits, the budget."""

from __future__ import annotations

import threading
import time

import pytest
from judge_server import ScriptedJudge
from marginlens.core.audit.judge_prompt import build_messages
from marginlens.core.chat_client import (
    Budget,
    BudgetExhausted,
    Endpoint,
    JudgeCallError,
    JudgeClient,
    RetryPolicy,
    public_url,
    redact,
)

MESSAGES = build_messages([{"role": "user", "content": "2+2?"}], "4", "5", "AB")
FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.02)
KEY = "sk-test-client-7f3a9c"


def client(judge: ScriptedJudge, budget: Budget | None = None, retry: RetryPolicy = FAST, timeout: float = 5.0):
    return JudgeClient(Endpoint("judge-x", judge.base_url, timeout=timeout, max_output_tokens=16), KEY,
                       budget=budget, retry=retry, seed=0)


@pytest.mark.parametrize("fault", ["500", "drop", "malformed", "429"])
def test_transient_faults_are_retried_until_an_answer(fault):
    with ScriptedJudge(faults=[fault, fault], retry_after=0.05) as judge:
        result = client(judge).complete(MESSAGES)
        assert result.text == "A" and not result.malformed
        assert result.attempts == 3
        assert judge.faults_seen() == [fault, fault, None]
        assert all(r.authorization == f"Bearer {KEY}" and r.model == "judge-x" for r in judge.requests)


def test_timeout_is_retried():
    with ScriptedJudge(faults=["hang"], hang_seconds=2.0) as judge:
        started = time.monotonic()
        result = client(judge, timeout=0.5).complete(MESSAGES)
        assert result.text == "A" and result.attempts == 2
        assert time.monotonic() - started < 1.9  # gave up on the hung request instead of waiting it out


def test_retry_after_is_honoured():
    with ScriptedJudge(faults=["429"], retry_after=1.0) as judge:
        started = time.monotonic()
        result = client(judge).complete(MESSAGES)
        assert result.attempts == 2
        assert time.monotonic() - started >= 1.0  # backoff alone would have waited ~0.01 s


def test_backoff_grows_exponentially_with_jitter():
    import random

    policy = RetryPolicy(base_delay=1.0, max_delay=8.0)
    rng = random.Random(1)
    delays = [[policy.delay(a, None, rng) for _ in range(200)] for a in (1, 2, 3, 5)]
    assert max(delays[0]) <= 1.0 and max(delays[1]) <= 2.0 and max(delays[2]) <= 4.0 and max(delays[3]) <= 8.0
    assert len({round(d, 6) for d in delays[2]}) > 100  # jittered, not a fixed schedule
    assert policy.delay(1, 30.0, rng) >= 30.0


def test_persistently_malformed_body_is_returned_as_malformed_not_raised():
    with ScriptedJudge(faults=["malformed"] * 4) as judge:
        judge_client = client(judge, budget=Budget(max_tokens=10_000))
        result = judge_client.complete(MESSAGES)
        assert result.malformed and result.text is None and result.attempts == 4
        assert result.raw.startswith('{"id": "x"')
        # a malformed body may still have been billed: each one is charged the worst case, not 0 tokens
        assert result.prompt_tokens > 0 and result.completion_tokens == 16
        assert judge_client.budget.spent.tokens == 4 * (result.prompt_tokens + 16)


def test_retries_are_bounded():
    with ScriptedJudge(faults=["500"] * 10) as judge:
        with pytest.raises(JudgeCallError) as info:
            client(judge).complete(MESSAGES)
        assert info.value.retryable and info.value.status == 500 and len(judge.requests) == 4


def test_auth_error_is_not_retried_and_the_echoed_key_is_redacted():
    with ScriptedJudge(faults=["401"]) as judge:
        with pytest.raises(JudgeCallError) as info:
            client(judge).complete(MESSAGES)
        assert not info.value.retryable and info.value.status == 401 and len(judge.requests) == 1
        assert KEY not in str(info.value) and "***" in str(info.value)


def test_call_budget_counts_retries_and_stops_before_sending():
    with ScriptedJudge(faults=["500"]) as judge:
        budget = Budget(max_calls=3)
        c = client(judge, budget=budget)
        assert c.complete(MESSAGES).attempts == 2  # a 500 then an answer: two requests
        c.complete(MESSAGES)
        with pytest.raises(BudgetExhausted):
            c.complete(MESSAGES)
        assert len(judge.requests) == 3 and budget.spent.calls == 3


def test_token_budget_uses_reported_usage_and_reserves_the_worst_case():
    with ScriptedJudge(usage=(40, 6)) as judge:
        c = client(judge)
        worst = c.worst_case_tokens(MESSAGES)
        budget = Budget(max_tokens=46 + worst)  # room for one real call plus one worst case
        c = client(judge, budget=budget)
        c.complete(MESSAGES)
        c.complete(MESSAGES)
        assert budget.spent.tokens == 92
        with pytest.raises(BudgetExhausted, match="token budget"):
            c.complete(MESSAGES)
        assert len(judge.requests) == 2


def test_stop_interrupts_a_long_retry_after():
    with ScriptedJudge(faults=["429"], retry_after=30) as judge:
        stop = threading.Event()
        threading.Timer(0.3, stop.set).start()
        started = time.monotonic()
        with pytest.raises(JudgeCallError, match="stopped"):
            client(judge).complete(MESSAGES, stop)
        assert time.monotonic() - started < 5


def test_urls_and_texts_are_scrubbed():
    assert public_url("https://user:pw@api.example.com/v1?key=abc") == "https://api.example.com/v1"
    assert redact("key sk-123456 and sk-123456", "sk-123456") == "key *** and ***"
    assert redact("a key", "k") == "a key"  # a 1-letter dummy key is no secret worth shredding text for
    assert KEY not in repr(JudgeClient(Endpoint("m", "http://127.0.0.1:9/v1"), KEY))
