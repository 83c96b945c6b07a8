"""The audit's judge client. The client itself is core.chat_client, shared with the LLM-rating scorer
(core.scoring.llm_rating), which sits below audit and may not import it; this module keeps the audit's
import path."""

from __future__ import annotations

from marginlens.core.chat_client import (
    CHARS_PER_TOKEN,
    KEY_ENV,
    MESSAGE_OVERHEAD_TOKENS,
    Budget,
    BudgetExhausted,
    Completion,
    Endpoint,
    JudgeCallError,
    JudgeClient,
    RequestLedger,
    RetryPolicy,
    Usage,
    estimate_tokens,
    public_url,
    redact,
)

__all__ = [
    "CHARS_PER_TOKEN",
    "KEY_ENV",
    "MESSAGE_OVERHEAD_TOKENS",
    "Budget",
    "BudgetExhausted",
    "Completion",
    "Endpoint",
    "JudgeCallError",
    "JudgeClient",
    "RequestLedger",
    "RetryPolicy",
    "Usage",
    "estimate_tokens",
    "public_url",
    "redact",
]
