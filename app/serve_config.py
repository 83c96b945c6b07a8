"""What the operator decided at launch (`marginlens app ...`): sign-in, data roots, LLM endpoints and their keys.

`marginlens app` writes this once into a file only its user can read and hands the server the path in
MARGINLENS_SERVE_CONFIG; the server process reads it once (`load`). Keys for the configured endpoints travel
in that file, not in the server's environment, so no job the dashboard starts inherits a key and no client
can name an environment variable to spend: a browser chooses among endpoint *names*, never a key.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from marginlens.core.errors import MarginLensError

CONFIG_ENV = "MARGINLENS_SERVE_CONFIG"
AUTH_MODES = ("token", "oidc", "none")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible endpoint the operator named; `key` is the server's key for it (or None)."""

    name: str
    url: str
    key: str | None = None

    def public(self) -> dict[str, str | bool]:
        return {"name": self.name, "url": self.url, "has_key": self.key is not None}


@dataclass(frozen=True)
class ServeConfig:
    auth: str = "token"
    operator_token: str | None = None
    viewer_token: str | None = None
    # Under OIDC: who may sign in (viewers) and who may also act (operators): e-mails or "@domain".
    allow: tuple[str, ...] = ()
    operators: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()  # Host headers accepted; empty: any (a non-loopback bind without names)
    data_roots: tuple[str, ...] = ()
    endpoints: tuple[Endpoint, ...] = field(default_factory=tuple)
    port: int = 8501
    # Under OIDC: the [auth] section for Streamlit's st.login when given by file (else .streamlit/secrets.toml).
    auth_secrets: dict | None = None

    def endpoint(self, name: str) -> Endpoint:
        for e in self.endpoints:
            if e.name == name:
                return e
        raise MarginLensError(f"no endpoint named {name!r} was configured at launch "
                              f"(configured: {', '.join(e.name for e in self.endpoints) or 'none'})")

    def roots(self) -> list[Path]:
        return [Path(r) for r in self.data_roots]

    @property
    def cookie_name(self) -> str:
        # Cookies ignore ports: two dashboards on one host must not read each other's sign-in.
        return f"marginlens-{self.port}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        data = json.loads(text)
        data["endpoints"] = tuple(Endpoint(**e) for e in data.get("endpoints", ()))
        for key in ("allow", "operators", "allowed_hosts", "data_roots"):
            data[key] = tuple(data.get(key, ()))
        return cls(**data)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_endpoint(text: str, environ: dict[str, str]) -> Endpoint:
    """`NAME=URL[,key_env=VAR]`: the key is read from the launching shell's VAR now."""
    name, sep, rest = text.partition("=")
    url, _, option = rest.partition(",")
    if not sep or not _NAME.match(name.strip()) or not url.strip():
        raise MarginLensError(f"--endpoint {text!r}: expected NAME=URL[,key_env=VAR]")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MarginLensError(f"--endpoint {name}: {url!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise MarginLensError(f"--endpoint {name}: put the key in an environment variable (key_env=VAR), "
                              "not in the URL")
    key = None
    if option:
        opt, _, var = option.partition("=")
        if opt.strip() != "key_env" or not _ENV_NAME.match(var.strip()):
            raise MarginLensError(f"--endpoint {text!r}: the only option is key_env=VAR (a variable name)")
        key = environ.get(var.strip())
        if not key:
            raise MarginLensError(f"--endpoint {name}: the variable {var.strip()} is not set in this shell")
    return Endpoint(name.strip(), url.strip().rstrip("/"), key)


def parse_data_root(text: str) -> str:
    root = Path(text).expanduser().resolve()
    if not root.is_dir():
        raise MarginLensError(f"--data-root {text}: no such folder")
    if root == Path(root.anchor):
        raise MarginLensError("--data-root /: a data root is a folder of datasets or models, not the whole disk")
    return str(root)


def write_private(config: ServeConfig) -> Path:
    """The config in a fresh folder only this user can enter (it holds the tokens and endpoint keys)."""
    folder = Path(tempfile.mkdtemp(prefix="marginlens-serve-"))  # mode 0700
    path = folder / "serve.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(config.to_json())
    return path


_INSTALLED: ServeConfig | None = None


def install_from_env() -> ServeConfig:
    """The server's start: read the file `marginlens app` wrote, keep it in this process and delete it, so no
    token or key outlives the server on disk."""
    global _INSTALLED
    path = os.environ.pop(CONFIG_ENV, None)
    if not path:
        raise MarginLensError("start the dashboard with `marginlens app` (it sets up sign-in); "
                              "`streamlit run` on its own serves nobody")
    _INSTALLED = ServeConfig.from_json(Path(path).read_text(encoding="utf-8"))
    Path(path).unlink(missing_ok=True)
    try:
        Path(path).parent.rmdir()
    except OSError:
        pass
    return _INSTALLED


def load() -> ServeConfig | None:
    """This server's config; None when no `marginlens app` started this process (a page under AppTest, a
    library user), or the file MARGINLENS_SERVE_CONFIG names (tests of pages under a given config)."""
    if _INSTALLED is not None:
        return _INSTALLED
    path = os.environ.get(CONFIG_ENV)
    return ServeConfig.from_json(Path(path).read_text(encoding="utf-8")) if path else None
