"""A scripted OpenAI-compatible judge: a real HTTP server on 127.0.0.1 speaking /v1/chat/completions.

The script decides each answer from the request (which response sits in position A and B), and a
fault queue injects failures one request at a time:
  "429"        Too Many Requests with a Retry-After header (seconds: `retry_after`)
  "500"        Internal Server Error
  "400"        Bad Request for this request alone (a prompt over the model's context)
  "hang"       sleeps `hang_seconds` before answering (past the client's timeout)
  "drop"       closes the connection without a response
  "malformed"  200 with a JSON content type and a truncated, unparseable body
  "offformat"  a well-formed completion whose answer is prose, not A or B
  "401"        Unauthorized, echoing the presented key the way some providers do
Faults can also be chosen per request by `fault_for(request) -> name | None`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_RESPONSE = re.compile(r"\[Response ([AB])\]\n(.*?)\n\[End of Response \1\]", re.DOTALL)


def responses(messages: list[dict[str, str]]) -> tuple[str, str]:
    """(response in position A, response in position B) from a judge prompt (core.audit.judge_prompt)."""
    found = dict(_RESPONSE.findall(messages[-1]["content"]))
    return found["A"], found["B"]


@dataclass
class Request:
    messages: list[dict[str, str]]
    model: str
    authorization: str
    fault: str | None
    answered: bool = False

    @property
    def pair(self) -> tuple[str, str]:
        return responses(self.messages)


def letter_for(better: Callable[[str], bool]) -> Callable[[Request], str]:
    """An answer script: the letter of the response for which `better(text)` holds (B if neither)."""

    def script(request: Request) -> str:
        a, _ = request.pair
        return "A" if better(a) else "B"

    return script


@dataclass
class ScriptedJudge:
    answer: Callable[[Request], str] = field(default=lambda r: "A")
    faults: list[str] = field(default_factory=list)
    fault_for: Callable[[Request], str | None] | None = None
    delay: float = 0.0
    retry_after: float = 1.0
    hang_seconds: float = 3.0
    usage: tuple[int, int] = (50, 5)
    models: list[str] = field(default_factory=list)  # what GET /v1/models lists
    requests: list[Request] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        judge = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): nothing to deliver

            def do_GET(self) -> None:
                listed = [{"id": name, "object": "model"} for name in judge.models]
                self._send(200, json.dumps({"object": "list", "data": listed}).encode())

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(length))
                request = Request(payload["messages"], payload["model"], self.headers.get("Authorization", ""), None)
                with judge._lock:
                    request.fault = judge.faults.pop(0) if judge.faults else None
                    if request.fault is None and judge.fault_for is not None:
                        request.fault = judge.fault_for(request)
                    judge.requests.append(request)
                if judge.delay:
                    time.sleep(judge.delay)
                judge._respond(self, request)

        self._handler = Handler
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> ScriptedJudge:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> ScriptedJudge:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    # -- what was asked ----------------------------------------------------------------------------
    def answered(self) -> Counter:
        """How many well-formed answers each (response A, response B) presentation received."""
        with self._lock:
            return Counter(r.pair for r in self.requests if r.answered)

    def faults_seen(self) -> list[str | None]:
        with self._lock:
            return [r.fault for r in self.requests]

    # -- answering ---------------------------------------------------------------------------------
    def _respond(self, handler: BaseHTTPRequestHandler, request: Request) -> None:
        send = handler._send  # type: ignore[attr-defined]
        fault = request.fault
        if fault == "429":
            send(429, json.dumps({"error": {"message": "rate limited", "type": "rate_limit"}}).encode(),
                 {"Retry-After": f"{self.retry_after:g}"})
        elif fault == "500":
            send(500, json.dumps({"error": {"message": "internal error"}}).encode())
        elif fault == "400":
            send(400, json.dumps({"error": {"message": "maximum context length exceeded",
                                            "code": "context_length_exceeded"}}).encode())
        elif fault == "401":
            key = request.authorization.removeprefix("Bearer ")
            send(401, json.dumps({"error": {"message": f"Incorrect API key provided: {key}"}}).encode())
        elif fault == "drop":
            handler.close_connection = True
            handler.connection.shutdown(2)  # socket.SHUT_RDWR: the client sees the connection die
        elif fault == "malformed":
            send(200, b'{"id": "x", "choices": [{"message": {"content": "A"')
        else:
            if fault == "hang":
                time.sleep(self.hang_seconds)
            content = "Both responses have their merits." if fault == "offformat" else self.answer(request)
            body = {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": request.model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": self.usage[0], "completion_tokens": self.usage[1],
                          "total_tokens": sum(self.usage)},
            }
            with self._lock:
                request.answered = fault != "hang"
            send(200, json.dumps(body).encode())
