"""`marginlens app`: the dashboard's own CLI command.

It lives with the dashboard, not in core: core's CLI finds it through the installed package's
`marginlens.commands` entry point, so core never names the layer above it.

Serving is safe by default: a random token signs in (printed in the startup URL), on every address; data
roots, LLM endpoints and their keys are what the operator names here, never what a browser sends. The
threat model is in docs/SECURITY.md.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
from pathlib import Path

from marginlens.app.serve_config import (
    CONFIG_ENV,
    MIN_TOKEN_LENGTH,
    ServeConfig,
    is_loopback,
    parse_data_root,
    parse_endpoint,
    write_private,
)
from marginlens.core.chat_client import KEY_ENV
from marginlens.core.errors import MarginLensError
from marginlens.core.workspace import Workspace

SERVER = Path(__file__).resolve().parent / "server.py"
TOKEN_ENV = "MARGINLENS_TOKEN"
VIEWER_TOKEN_ENV = "MARGINLENS_VIEWER_TOKEN"
_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9._~-]+$")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("app", parents=[common], help="start the dashboard (a web app in the browser)",
                       description="Start the MarginLens dashboard, a web app that does what the CLI does: import a "
                                   "dataset, score it, explore its margins, audit the labels with an LLM judge, "
                                   "export a selection and train on it. It serves http://HOST:PORT (default "
                                   "http://127.0.0.1:8501) until Ctrl-C; jobs it starts keep running without it. "
                                   "Sign-in is on by default on every address: a random token, printed in the URL "
                                   f"it prints (or --token / ${TOKEN_ENV}).",
                       epilog="example: marginlens app --demo   (with the built-in demo dataset in the workspace)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    p.add_argument("--demo", action="store_true", help="make sure the built-in demo dataset is in the workspace")
    p.add_argument("--token", help=f"the operator's sign-in token (default ${TOKEN_ENV}, else a random one); "
                                   f"at least {MIN_TOKEN_LENGTH} characters")
    p.add_argument("--viewer-token", help=f"a second token that signs in read-only viewers (default "
                                          f"${VIEWER_TOKEN_ENV}; none: there are no viewers)")
    p.add_argument("--auth", choices=("token", "oidc"), default="token",
                   help="oidc: sign in through Streamlit's st.login with the [auth] section of "
                        ".streamlit/secrets.toml; --allow/--operator say who may")
    p.add_argument("--auth-config", metavar="FILE.toml",
                   help="under --auth oidc: a TOML file whose [auth] section configures st.login (default: "
                        "Streamlit's own .streamlit/secrets.toml)")
    p.add_argument("--allow", action="append", default=[], metavar="EMAIL|@DOMAIN",
                   help="under --auth oidc: who may sign in as a viewer (repeatable)")
    p.add_argument("--operator", action="append", default=[], metavar="EMAIL|@DOMAIN",
                   help="under --auth oidc: who may also import, score, audit, train and export (repeatable)")
    p.add_argument("--no-auth", action="store_true",
                   help="no sign-in: everyone who reaches the port is an operator; refused on a non-loopback --host")
    p.add_argument("--data-root", action="append", default=[], metavar="DIR",
                   help="a folder whose files the dashboard may read as datasets or models (repeatable; "
                        "default none: uploads and the workspace only)")
    p.add_argument("--endpoint", action="append", default=[], metavar="NAME=URL[,key_env=VAR]",
                   help="an OpenAI-compatible endpoint users may pick by name; the key is read from VAR now and "
                        "sent to URL only (repeatable). OpenAI itself counts only when listed, e.g. "
                        f"openai=https://api.openai.com/v1,key_env={KEY_ENV}")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name clients use to reach this server (repeatable; a loopback --host allows "
                        "localhost and 127.0.0.1 only, which stops DNS rebinding)")
    p.set_defaults(func=cmd_app)


def _token(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if len(value) < MIN_TOKEN_LENGTH or not _TOKEN_CHARS.match(value):
        raise MarginLensError(f"{what}: at least {MIN_TOKEN_LENGTH} characters of A-Z a-z 0-9 . _ ~ -")
    return value


def serve_config(args: argparse.Namespace, environ: dict[str, str]) -> ServeConfig:
    """What this launch allows, checked before anything starts."""
    loopback = is_loopback(args.host)
    if args.no_auth and not loopback:
        raise MarginLensError(f"--no-auth on {args.host}: anyone who reaches that address could import, train "
                              "and delete; serve without sign-in on 127.0.0.1 only")
    if args.auth == "oidc" and not (args.allow or args.operator):
        raise MarginLensError("--auth oidc needs --allow or --operator: say who may sign in")
    auth = "none" if args.no_auth else args.auth
    auth_secrets = None
    if args.auth_config:
        import tomllib

        try:
            auth_secrets = tomllib.loads(Path(args.auth_config).read_text(encoding="utf-8"))["auth"]
        except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
            raise MarginLensError(f"--auth-config {args.auth_config}: no readable [auth] section ({exc})") from None
    operator = _token(args.token or environ.get(TOKEN_ENV), "--token") or secrets.token_urlsafe(24)
    viewer = _token(args.viewer_token or environ.get(VIEWER_TOKEN_ENV), "--viewer-token")
    if viewer is not None and viewer == operator:
        raise MarginLensError("--viewer-token must differ from the operator's token")
    hosts = list(args.allowed_host)
    if loopback:
        hosts += ["127.0.0.1", "localhost", "[::1]"]
    elif args.host not in ("0.0.0.0", "::") and hosts:
        hosts.append(args.host)
    return ServeConfig(
        auth=auth, operator_token=operator if auth == "token" else None, viewer_token=viewer if auth == "token" else None,
        allow=tuple(a.lower() for a in args.allow), operators=tuple(o.lower() for o in args.operator),
        allowed_hosts=tuple(h.lower() for h in hosts), data_roots=tuple(parse_data_root(d) for d in args.data_root),
        endpoints=tuple(parse_endpoint(e, environ) for e in args.endpoint), port=args.port,
        auth_secrets=auth_secrets)


def server_environment(config: ServeConfig, environ: dict[str, str], key_vars: list[str]) -> dict[str, str]:
    """The server's environment without any key the operator did not route to an endpoint: jobs the dashboard
    starts inherit it, and a job falls back to OPENAI_API_KEY when no key is given."""
    # The Hub token and OpenAI's base URL too: a client naming a private Hub id would read it with the server's
    # token, and a request without a URL would go wherever OPENAI_BASE_URL points.
    drop = {KEY_ENV, TOKEN_ENV, VIEWER_TOKEN_ENV, "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_BASE_URL", *key_vars}
    return {**{k: v for k, v in environ.items() if k not in drop}, "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"}


def cmd_app(args: argparse.Namespace) -> int:
    ws = Workspace.resolve(args.workspace)
    config = serve_config(args, dict(os.environ))
    if args.demo:
        from marginlens.core.demo.build import ensure_demo

        print(ensure_demo(ws))
    key_vars = [e.partition(",key_env=")[2].strip() for e in args.endpoint if ",key_env=" in e]
    env = {**server_environment(config, dict(os.environ), key_vars), "MARGINLENS_WORKSPACE": str(ws.root),
           CONFIG_ENV: str(write_private(config))}
    # Every setting on the command line: an installed dashboard starts from any folder, where no
    # .streamlit/config.toml is there to read. Tracebacks stay in this terminal (error_report shows an id).
    command = [sys.executable, "-m", "streamlit", "run", str(SERVER), "--server.address", args.host,
               "--server.port", str(args.port), "--server.headless", "true",
               "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer",
               "--client.showErrorDetails", "none", "--server.fileWatcherType", "none",
               # Pinned, whatever a config.toml or STREAMLIT_* variable says: the gate assumes them.
               "--server.enableXsrfProtection", "true", "--server.enableCORS", "true",
               "--server.enableAgentApi", "false", "--server.trustedUserHeaders", "{}"]
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{shown}:{args.port}/"
    if config.auth == "token":
        print(f"MarginLens dashboard: open {url}?token={config.operator_token}", flush=True)
        if config.viewer_token:
            print(f"  viewers (read-only): {url}?token={config.viewer_token}", flush=True)
    elif config.auth == "none":
        print(f"MarginLens dashboard on {url}  (no sign-in: this machine's users only)", flush=True)
    else:
        print(f"MarginLens dashboard on {url}  (sign-in through OIDC)", flush=True)
    print(f"  workspace {ws.root}; data roots: {', '.join(config.data_roots) or 'none'}; "
          f"endpoints: {', '.join(e.name for e in config.endpoints) or 'none'}", flush=True)
    # Become the server (no wrapper process): a signal to `marginlens app` then reaches streamlit itself,
    # and stopping it never leaves an orphaned server holding the port.
    os.execve(sys.executable, command, env)
