"""How a page turns the LLM endpoint a user picked (`access.endpoint_picker`) into a job: the URL goes into the
job's spec, the key only into its worker's environment, under the variable the core code reads there.

A worker inherits the server's environment. `marginlens app` strips every key from it, but no page counts on
that: the variable a job reads is always set, to the chosen key or to "" (which the core clients send as no
key), so a typed URL with an empty key field never carries a key the server holds. The endpoint pre-checks run
here with the chosen key for the same reason (the core ones fall back to this process's environment).

Evaluator and annotator texts (`judge:MODEL,...`) may not name an endpoint or a key variable themselves: a
client naming `api_key_env=ANY_VARIABLE` would have the server send that variable's value to its URL.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from marginlens.app import access
from marginlens.app.access import EndpointChoice
from marginlens.core.chat_client import KEY_ENV, Endpoint
from marginlens.core.errors import MarginLensError

# Options of an evaluator text that only the page sets: from the endpoint picker, never from the text.
PAGE_OPTIONS = ("base_url", "api_key_env")
LLM_KINDS = ("rating", "judge")  # evaluator kinds that ask an endpoint (core.experiments.evaluators)
OPENAI_URL = "https://api.openai.com/v1"  # where an endpoint without a base URL goes (the openai package's default)


def same_url(a: str | None, b: str | None) -> bool:
    return (a or OPENAI_URL).strip().rstrip("/") == (b or OPENAI_URL).strip().rstrip("/")


def chosen_url(choice: EndpointChoice, what: str) -> str:
    if not choice.url:
        raise MarginLensError(f"{what}: pick a configured endpoint, or choose '{access.OWN_URL}' and type its "
                              "base URL (e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1)")
    url = choice.url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MarginLensError(f"{what}: {url!r} is not an http(s) URL such as http://127.0.0.1:8000/v1")
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise MarginLensError(f"{what}: type the key in the key field, not in the URL (a URL is stored with the job)")
    return url


def key_env(choice: EndpointChoice | None, name: str = KEY_ENV) -> dict[str, str]:
    """The worker's environment for one endpoint: its key under `name`, or "" (no key), never nothing."""
    return {name: (choice.key if choice is not None else None) or ""}


def for_url(url: str | None, picked: Iterable[EndpointChoice] = ()) -> EndpointChoice:
    """The key to send to `url` (an endpoint a stored job or plan asks): the one picked on the page for that very
    URL, else a configured endpoint's at that URL, else none. A key never goes to another URL than its own."""
    for choice in [*picked, *(EndpointChoice(e.url, e.key) for e in access.configured_endpoints())]:
        if choice.url and same_url(choice.url, url):
            return EndpointChoice(url, choice.key)
    return EndpointChoice(url, None)


def check(model: str, choice: EndpointChoice, timeout: float = 60.0) -> str | None:
    """The endpoint must answer now with the chosen key (core.audit.endpoint_check), not with a key of this
    process's environment; a warning to show, or None."""
    from marginlens.core.audit.endpoint_check import check_endpoint

    return check_endpoint(Endpoint(model, choice.url, timeout=timeout), choice.key)


def _parts(text: str) -> tuple[str, str, list[str]]:
    head, *options = [part.strip() for part in (text or "").split(",")]
    kind, _, target = head.partition(":")
    return kind.strip().lower(), target.strip(), options


def kind_of(text: str) -> str:
    """The evaluator kind an evaluator text names (verifier, reward, rating, judge), lower-cased."""
    return _parts(text)[0]


def asks_llm(text: str) -> bool:
    return kind_of(text) in LLM_KINDS


def evaluator_text(text: str, workspace_root: Path, what: str) -> str:
    """An evaluator/annotator text as typed, refused when it names an endpoint or a key variable itself; a
    reward model's folder confined like any model (access.model_spec)."""
    kind, target, options = _parts(text)
    for option in options:
        name = option.partition("=")[0].strip().lower()
        if name in PAGE_OPTIONS:
            raise MarginLensError(
                f"{what} {text.strip()!r}: {name}= is not accepted on the dashboard; pick the endpoint under "
                f"'{what} endpoint' instead (a configured endpoint carries the server's key to its own URL, another "
                "URL only the key typed beside it)")
    if kind == "reward" and target:
        model = access.model_spec(target, workspace_root, f"{what} reward model")
        return ",".join([f"{kind}:{model}", *options])
    return text.strip()


def with_endpoint(text: str, choice: EndpointChoice, what: str, key_variable: str | None = None) -> str:
    """The evaluator text with the picked endpoint's URL (and the variable its worker reads the key from)."""
    extra = f",base_url={chosen_url(choice, what)}"
    return text + extra + (f",api_key_env={key_variable}" if key_variable else "")
