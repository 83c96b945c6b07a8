"""Before an audit starts: can its judge endpoint answer at all? One GET of the model list tells whether
the server is reachable, whether it accepts the key, and (when it lists models) whether it lists the
judge model. Without this, an unreachable endpoint spends minutes in retries before anything says so.

A model missing from the list is only a warning: servers answer to names they do not list (Ollama takes
`llama3` and lists `llama3:latest`; LiteLLM and OpenRouter route aliases). A truly unknown model fails the
first calls (HTTP 404, which stops the audit: core.audit.audit_job.FATAL_STATUSES).

A server without a model list (404/405/501 on /models) is given the benefit of the doubt: the audit's
first calls then tell, and the job stops when every call fails (core.audit.audit_job).
"""

from __future__ import annotations

import json

from marginlens.core.chat_client import Endpoint, public_url, redact
from marginlens.core.errors import MarginLensError

CHECK_TIMEOUT = 10.0  # seconds: a reachable server lists its models well within this
_NO_MODEL_LIST = (404, 405, 501)


def _server_message(exc: object, key: str | None) -> str:
    """The server's own words from an error response (its JSON "error.message" when it sends one)."""
    response = getattr(exc, "response", None)
    text = ""
    try:
        text = response.text if response is not None else ""
        body = json.loads(text)
        error = body.get("error") if isinstance(body, dict) else None
        text = str(error.get("message") if isinstance(error, dict) else error or body.get("message") or text)
    except (ValueError, AttributeError, TypeError):
        pass
    return redact(text.strip() or str(getattr(exc, "message", "") or exc), key)[:500]


def check_endpoint(endpoint: Endpoint, api_key: str | None) -> str | None:
    """Raise a MarginLensError naming the endpoint and quoting the server when the audit could not run;
    return a warning to show when the server does not list the judge model (None when all looks right)."""
    import openai

    where = public_url(endpoint.base_url) or "https://api.openai.com/v1"
    client = openai.OpenAI(api_key=api_key or "no-key", base_url=endpoint.base_url,
                           timeout=min(CHECK_TIMEOUT, endpoint.timeout), max_retries=0)
    try:
        models = [m.id for m in client.models.list().data]
    except openai.APITimeoutError:
        raise MarginLensError(f"judge endpoint {where} did not answer within "
                              f"{min(CHECK_TIMEOUT, endpoint.timeout):g}s; check the URL") from None
    except openai.APIConnectionError as exc:
        cause = exc.__cause__ or exc
        raise MarginLensError(f"cannot reach the judge endpoint {where}: {redact(str(cause), api_key)[:300]}; "
                              "check the URL and that the server is running") from None
    except openai.APIStatusError as exc:
        status = exc.status_code
        if status in _NO_MODEL_LIST:
            return None
        said = _server_message(exc, api_key)
        if status in (401, 403):
            raise MarginLensError(f"judge endpoint {where} refused the API key (HTTP {status}): {said}") from None
        raise MarginLensError(f"judge endpoint {where} answered HTTP {status}: {said}") from None
    if models and endpoint.model not in models:
        shown = ", ".join(sorted(models)[:10]) + (" ..." if len(models) > 10 else "")
        return (f"judge endpoint {where} does not list model {endpoint.model!r} (it lists: {shown}); going ahead, "
                "as servers accept names they do not list, but check the name if the first calls fail")
    return None
