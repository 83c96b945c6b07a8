"""Every trust decision a page makes, in one module: who is signed in, what they may do, which server paths
they may read, and which endpoint (with which key) an LLM request goes to.

Pages never read a path, a key or a role any other way. The sign-in itself happens before any page runs
(`signin_gate` for tokens; `sign_in` below for OIDC), and `core.actor` refuses a viewer's writes again in
core, so a page that forgets a check still cannot start a job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from marginlens.app.serve_config import Endpoint, ServeConfig, load
from marginlens.app.signin_gate import ROLE_HEADER, SIGNOUT_PATH
from marginlens.core import actor
from marginlens.core.errors import MarginLensError


def _matches(email: str, rules: tuple[str, ...]) -> bool:
    email = email.lower()
    return any(email == r or (r.startswith("@") and email.endswith(r)) for r in rules)


def identity(config: ServeConfig | None) -> actor.Actor | None:
    """The actor of this browser session, or None when it has not signed in (OIDC) or is not allowed."""
    if config is None:  # a page run outside `marginlens app` (AppTest, a library user): the local user
        return actor.current()
    if config.auth == "none":  # no sign-in, loopback only (launch refuses it elsewhere): whoever is here operates
        return actor.Actor("operator (no sign-in)", may_write=True)
    if config.auth == "oidc":
        if not st.user.is_logged_in:
            return None
        email = str(st.user.get("email") or "")
        if st.user.get("email_verified") is not True:  # an unverified e-mail claim proves nothing ("nOAuth")
            return None
        if _matches(email, config.operators):
            return actor.Actor(email, may_write=True)
        if _matches(email, config.allow):
            return actor.Actor(email, may_write=False)
        return None
    role = st.context.headers.get(ROLE_HEADER.decode())
    if role not in ("operator", "viewer"):
        return None
    return actor.Actor(role, may_write=role == "operator")


def sign_in() -> actor.Actor:
    """Run first in every script run: make the signed-in user the actor, or show the sign-in and stop."""
    config = load()
    who = identity(config)
    if who is None:
        st.title("MarginLens")
        if config is not None and config.auth == "oidc" and not st.user.is_logged_in:
            st.write("Sign in to use this dashboard.")
            if st.button("Sign in", type="primary"):
                st.login()
        elif config is not None and config.auth == "oidc":
            st.error(f"{st.user.get('email')} may not use this dashboard (an allowed, verified e-mail is needed); "
                     "ask whoever runs it to add you.")
            if st.button("Sign out"):
                st.logout()
        else:
            st.error("Not signed in. Open the URL printed by `marginlens app` (it ends in ?token=...).")
        st.stop()
    actor.act_as(who)
    return who


def restore_actor() -> None:
    """Make this session's user the actor again in a fragment rerun: Streamlit runs a fragment in a fresh
    thread without main.py, where the actor would otherwise be the read-only default."""
    config = load()
    who = identity(config)
    if config is not None:
        actor.act_as(who or actor.Actor("not signed in", may_write=False))


def can_operate() -> bool:
    return actor.current().may_write


def operator_only(what: str) -> bool:
    """True when the user may `what`; else a note saying who can, and False (the caller skips its form)."""
    if can_operate():
        return True
    st.info(f"Viewers browse, filter, read audits and download exports; {what} needs the operator's sign-in.")
    return False


def sign_out_link() -> None:
    config = load()
    if config is not None and config.auth == "token":
        st.sidebar.link_button("Sign out", SIGNOUT_PATH)
    elif config is not None and config.auth == "oidc" and st.sidebar.button("Sign out"):
        st.logout()


# ------------------------------------------------------------------------------------------------
# Server paths
# ------------------------------------------------------------------------------------------------
def data_roots() -> list[Path]:
    config = load()
    return config.roots() if config is not None else []


def server_path(text: str, what: str = "path") -> Path:
    """A path a client typed, resolved (symlinks too) and allowed only under a data root from the launch."""
    roots = data_roots()
    if not roots:
        raise MarginLensError(f"{what}: this dashboard reads no server paths (start it with "
                              "`marginlens app --data-root DIR` to allow a folder); upload the file instead")
    path = Path(text.strip()).expanduser()
    if not path.is_absolute():
        raise MarginLensError(f"{what} {text!r}: give an absolute path under "
                              f"{' or '.join(str(r) for r in roots)}")
    resolved = path.resolve()
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise MarginLensError(f"{what} {text!r} is outside the data roots this dashboard may read "
                              f"({', '.join(str(r) for r in roots)})")
    return resolved


def model_spec(text: str, workspace_root: Path, what: str = "model") -> str:
    """A model a client named: a Hub id as typed, or a folder under a data root or the workspace (trained
    models live in its runs/). Anything that names a server folder elsewhere is refused."""
    text = text.strip()
    path = Path(text).expanduser()
    if not (text.startswith(("/", ".", "~")) or path.exists()):
        return text  # a Hub id or a built-in alias: nothing on this server's disk
    resolved = path.resolve()
    ws = workspace_root.resolve()
    if resolved == ws or resolved.is_relative_to(ws):
        return str(resolved)
    return str(server_path(str(resolved), what))


# ------------------------------------------------------------------------------------------------
# LLM endpoints
# ------------------------------------------------------------------------------------------------
OWN_URL = "Another URL (your own key)"


@dataclass(frozen=True)
class EndpointChoice:
    """Where an LLM request goes and the key it carries (None: no key is sent)."""

    url: str | None  # None: nothing chosen yet
    key: str | None


def configured_endpoints() -> list[Endpoint]:
    config = load()
    return list(config.endpoints) if config is not None else []


def endpoint_picker(label: str, key: str, url_placeholder: str = "http://127.0.0.1:8000/v1") -> EndpointChoice:
    """Pick a configured endpoint by name (its key is the server's, sent to its URL only) or type a URL and a
    key of your own (kept in this browser session, sent to that URL only)."""
    names = [e.name for e in configured_endpoints()]
    choice = st.selectbox(label, [*names, OWN_URL], key=f"{key}_choice",
                          help="Endpoints the operator configured carry the server's key; another URL carries "
                               "only the key typed here.")
    if choice != OWN_URL:
        endpoint = next(e for e in configured_endpoints() if e.name == choice)
        st.caption(f"{endpoint.url}" + (" · the server's key" if endpoint.key else " · no key"))
        return EndpointChoice(endpoint.url, endpoint.key)
    c1, c2 = st.columns(2)
    url = c1.text_input("Base URL", key=f"{key}_url", placeholder=url_placeholder).strip()
    typed = c2.text_input("API key (optional)", type="password", key=f"{key}_key",
                          help="Kept in this browser session only and sent only to the URL beside it.").strip()
    return EndpointChoice(url or None, typed or None)
