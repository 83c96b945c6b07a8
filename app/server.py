"""The dashboard's server: Streamlit's ASGI app behind the sign-in gate, with errors kept in the server log.

`marginlens app` runs this file with `streamlit run` (Streamlit finds the `app` below and serves it with
uvicorn); the pages themselves start at `main.py`.
"""

import logging
from pathlib import Path

import streamlit as st
from marginlens.app.error_report import report
from marginlens.app.serve_config import install_from_env
from marginlens.app.signin_gate import SignInGate
from marginlens.core import actor
from starlette.middleware import Middleware

config = install_from_env()
actor.set_process_default(actor.Actor("not signed in", may_write=False))
logging.getLogger("marginlens.dashboard").addHandler(logging.StreamHandler())
app = st.App(Path(__file__).resolve().parent / "main.py", middleware=[Middleware(SignInGate, config=config)],
             on_script_error=report, secrets={"auth": config.auth_secrets} if config.auth_secrets else None)
