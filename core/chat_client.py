"""A chat-completions client for any OpenAI-compatible model: retries, backoff, a budget, no key leaks.

Shared ground: the audit's LLM judge (core.audit) and the LLM-rating scorer (core.scoring.llm_rating) both ask
through it, so neither layer imports the other.

The openai package's own retries are switched off (max_retries=0) so that one policy, this one, decides
what is retried and how long to wait:
  retried   429 (waiting at least Retry-After), 408/409, 5xx, timeouts, dropped connections and
            response bodies that are not valid JSON (a proxy or server glitch, not an answer)
  not retried  other 4xx (bad key, unknown model, bad request): they will not heal by waiting.
Backoff is exponential with full jitter, capped, and interruptible through a threading.Event so that a
cancelled job does not sit out a long Retry-After.

The budget counts every HTTP request as a call (a retried request may be billed, and the budget is
there to bound what the user can be charged) and the tokens the server reports. Before each request
it reserves one call and the request's worst-case tokens; a request that would not fit is never sent.

The API key lives only in this process's memory: it is never part of a repr, an error message or a
stored raw text (`redact` removes it should a server echo it back).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from marginlens.core.errors import MarginLensError

if TYPE_CHECKING:
    from marginlens.core.keyed_log import KeyedLog

KEY_ENV = "OPENAI_API_KEY"
CHARS_PER_TOKEN = 4  # rough, model-independent: good enough for a cost estimate before a run
MESSAGE_OVERHEAD_TOKENS = 4


class BudgetExhausted(MarginLensError):
    """The next request would exceed the call or token budget."""


class JudgeCallError(MarginLensError):
    """A request failed for good (non-retryable status, or retries used up)."""

    def __init__(self, message: str, retryable: bool, attempts: int, status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.attempts = attempts
        self.status = status  # the HTTP status of the last attempt, when it got one


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced (servers sometimes echo the key in errors)."""
    if not secret or len(secret) < 6 or not text:  # a 1-letter dummy key would shred every message
        return text
    return text.replace(secret, "***")


def public_url(base_url: str | None) -> str | None:
    """The endpoint URL without credentials or query string, safe to store next to a verdict."""
    if not base_url:
        return base_url
    parts = urlsplit(base_url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"]) // CHARS_PER_TOKEN + MESSAGE_OVERHEAD_TOKENS for m in messages)


@dataclass(frozen=True)
class Endpoint:
    """Where and how to ask. Holds no key: the key is passed to JudgeClient separately."""

    model: str
    base_url: str | None = None  # None: the openai package's default (api.openai.com)
    timeout: float = 60.0  # seconds per request
    max_output_tokens: int = 128
    temperature: float = 0.0
    top_p: float | None = None  # None: not sent (the server's default); self-play's evolver samples with one


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 60.0
    max_retry_after: float = 300.0  # a server asking for longer than this is treated as this

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before attempt `attempt + 1` (attempt counts from 1)."""
        backoff = rng.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))
        if retry_after is not None:
            return max(min(retry_after, self.max_retry_after), backoff)
        return backoff


@dataclass
class Usage:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Budget:
    """Call and token limits shared by all threads of one run; `spent` carries usage of earlier runs."""

    max_calls: int | None = None
    max_tokens: int | None = None
    spent: Usage = field(default_factory=Usage)
    _reserved_calls: int = 0
    _reserved_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reserve(self, tokens: int) -> None:
        """Claim one call and `tokens` worst-case tokens, or raise BudgetExhausted without claiming."""
        with self._lock:
            if self.max_calls is not None and self.spent.calls + self._reserved_calls + 1 > self.max_calls:
                raise BudgetExhausted(f"call budget of {self.max_calls} reached")
            if self.max_tokens is not None and self.spent.tokens + self._reserved_tokens + tokens > self.max_tokens:
                raise BudgetExhausted(
                    f"token budget of {self.max_tokens} reached ({self.spent.tokens} used, next call needs "
                    f"up to {tokens})"
                )
            self._reserved_calls += 1
            self._reserved_tokens += tokens

    def settle(self, reserved_tokens: int, prompt_tokens: int, completion_tokens: int) -> None:
        """Replace a reservation by what the request actually cost."""
        with self._lock:
            self._reserved_calls -= 1
            self._reserved_tokens -= reserved_tokens
            self.spent.calls += 1
            self.spent.prompt_tokens += prompt_tokens
            self.spent.completion_tokens += completion_tokens


@dataclass(frozen=True)
class Completion:
    """One finished request: the answer text (None when the body was unusable) and what it cost."""

    text: str | None
    raw: str  # the answer text, or the unusable body, key redacted
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    malformed: bool = False  # the body never parsed, even after retries


@dataclass(frozen=True)
class _Attempt:
    completion: Completion | None
    error: str | None
    retryable: bool
    retry_after: float | None = None
    status: int | None = None


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # the HTTP-date form
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class RequestLedger:
    """An append-only, fsynced log of requests sent and tokens used, so that a job killed and resumed
    keeps counting its budget from what it really spent (including requests it never saw answered).

    Lines: "sent" before each request; "used PROMPT COMPLETION" after a request that reported usage.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()

    def spent(self) -> Usage:
        usage = Usage()
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return usage
        for line in lines:
            parts = line.split()
            if parts == ["sent"]:
                usage.calls += 1
            elif len(parts) == 3 and parts[0] == "used" and parts[1].isdigit() and parts[2].isdigit():
                usage.prompt_tokens += int(parts[1])
                usage.completion_tokens += int(parts[2])
        return usage

    def _append(self, line: str) -> None:
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, f"\n{line}\n".encode())  # leading newline: ends a line torn by a crash
                os.fsync(fd)
            finally:
                os.close(fd)

    def sent(self) -> None:
        self._append("sent")

    def used(self, prompt_tokens: int, completion_tokens: int) -> None:
        self._append(f"used {prompt_tokens} {completion_tokens}")


class JudgeClient:
    """Sends one chat completion at a time per thread; safe to share between threads."""

    def __init__(
        self,
        endpoint: Endpoint,
        api_key: str | None,
        budget: Budget | None = None,
        retry: RetryPolicy | None = None,
        ledger: RequestLedger | None = None,
        seed: int | None = None,
    ):
        import openai

        self.endpoint = endpoint
        self.budget = budget or Budget()
        self.retry = retry or RetryPolicy()
        self._key = api_key
        self._ledger = ledger
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._openai = openai
        self._client = openai.OpenAI(
            api_key=api_key or "no-key",  # local servers need none; the package insists on a value
            base_url=endpoint.base_url,
            timeout=endpoint.timeout,
            max_retries=0,
        )

    def __repr__(self) -> str:
        return f"JudgeClient({self.endpoint!r})"

    def worst_case_tokens(self, messages: list[dict[str, str]]) -> int:
        return estimate_tokens(messages) + self.endpoint.max_output_tokens

    def complete(self, messages: list[dict[str, str]], stop: threading.Event | None = None) -> Completion:
        """Ask once, retrying transient failures. Raises BudgetExhausted, JudgeCallError, or returns.

        A body that stays malformed after all retries is returned (malformed=True) rather than raised:
        the server did answer, so the caller records it as an invalid verdict instead of paying again.
        """
        stop = stop or threading.Event()
        outcome = _Attempt(None, "no attempt made", True)
        for attempt in range(1, self.retry.max_attempts + 1):
            if stop.is_set():
                raise JudgeCallError(f"stopped before attempt {attempt}: {outcome.error}", True, attempt - 1)
            reserved = self.worst_case_tokens(messages)
            self.budget.reserve(reserved)
            outcome = self._attempt(messages, reserved, attempt)
            if outcome.error is None and outcome.completion is not None:
                return outcome.completion
            if not outcome.retryable:
                raise JudgeCallError(outcome.error or "failed", False, attempt, outcome.status)
            if attempt < self.retry.max_attempts:
                with self._rng_lock:
                    wait = self.retry.delay(attempt, outcome.retry_after, self._rng)
                if stop.wait(wait):
                    raise JudgeCallError(f"stopped while backing off: {outcome.error}", True, attempt)
        if outcome.completion is not None:  # the server kept answering, but never with a usable body
            return outcome.completion
        raise JudgeCallError(f"gave up after {self.retry.max_attempts} attempts: {outcome.error}", True,
                             self.retry.max_attempts, outcome.status)

    def _attempt(self, messages: list[dict[str, str]], reserved: int, attempt: int) -> _Attempt:
        openai = self._openai
        prompt_tokens = completion_tokens = 0
        if self._ledger:
            self._ledger.sent()  # before sending: a kill mid-request must still count the request
        try:
            response = self._client.chat.completions.with_raw_response.create(
                model=self.endpoint.model,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=self.endpoint.max_output_tokens,
                temperature=self.endpoint.temperature,
                **({"top_p": self.endpoint.top_p} if self.endpoint.top_p is not None else {}),
            )
            body = response.http_response.text
            try:
                data = json.loads(body)
                text = data["choices"][0]["message"]["content"]
                if text is not None and not isinstance(text, str):
                    raise TypeError(f"content is {type(text).__name__}")
                usage = data.get("usage") or {}
                # Servers that report no usage are charged the estimate, so a token budget still bounds them.
                prompt_tokens = int(usage.get("prompt_tokens") or estimate_tokens(messages))
                completion_tokens = int(usage.get("completion_tokens") or len(text or "") // CHARS_PER_TOKEN + 1)
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                raw = redact(body[:2000], self._key)
                # The server may have billed it: charge the worst case, so --max-tokens stays a hard cap.
                prompt_tokens, completion_tokens = estimate_tokens(messages), self.endpoint.max_output_tokens
                return _Attempt(Completion(None, raw, prompt_tokens, completion_tokens, attempt, malformed=True),
                                "malformed response body", True)
            text = text or ""
            return _Attempt(Completion(text, redact(text, self._key), prompt_tokens, completion_tokens, attempt),
                            None, False)
        except openai.APIStatusError as exc:
            status = exc.status_code
            message = redact(f"HTTP {status}: {exc.message}", self._key)[:500]
            retryable = status in (408, 409, 429) or status >= 500
            retry_after = _retry_after(exc.response.headers) if status in (429, 503) else None
            return _Attempt(None, message, retryable, retry_after, status)
        except openai.APITimeoutError:
            return _Attempt(None, f"timed out after {self.endpoint.timeout:g}s", True)
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            return _Attempt(None, redact(f"connection failed: {type(cause).__name__}: {cause}", self._key)[:500],
                            True)
        finally:
            self.budget.settle(reserved, prompt_tokens, completion_tokens)
            if self._ledger and (prompt_tokens or completion_tokens):
                self._ledger.used(prompt_tokens, completion_tokens)


def request_key(messages: list[dict[str, str]]) -> str:
    """A request's identity: the hash of its messages (what a stored answer is found by)."""
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()


def ask_once(store: KeyedLog, client: JudgeClient, messages: list[dict[str, str]],
             answer: Callable[[Completion], dict[str, Any]], out_of_budget: Callable[[BudgetExhausted], str],
             **meta: Any) -> dict[str, Any]:
    """The stored answer to `messages`, or ask, store and return it: a request is paid for once per store.

    `answer` turns the completion into the record's own fields (a verdict, a rating), `meta` adds what
    produced it (model, prompt or rubric version, public URL); the request's key, the raw answer, its
    tokens, attempts and time are always kept. A spent budget raises MarginLensError(out_of_budget(exc)).
    """
    key = request_key(messages)
    stored = store.get(key)
    if stored is not None:
        return stored
    # No lock while asking: another job asking other requests of this store never waits on ours.
    try:
        completion = client.complete(messages)
    except BudgetExhausted as exc:
        raise MarginLensError(out_of_budget(exc)) from None
    record = {"key": key, **answer(completion), "raw": completion.raw, **meta,
              "prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
              "attempts": completion.attempts, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if store.append(record):
        return record
    return store.get(key) or record  # a job running beside this one stored it meanwhile: theirs stands
