"""Uncaught errors in a page: a message for the client, the traceback for the server log.

A traceback names server paths, library versions and sometimes data; a client on a shared dashboard sees
what failed and what to do, plus an id that finds the full report in the server's log.
"""

from __future__ import annotations

import logging
import secrets
import traceback

import streamlit as st
from marginlens.core.errors import MarginLensError

log = logging.getLogger("marginlens.dashboard")


def report(exc: BaseException) -> bool:
    """Log `exc` with a fresh id and show the client a message naming it; True: Streamlit shows nothing more."""
    error_id = secrets.token_hex(4)
    log.error("error %s in a page:\n%s", error_id,
              "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    if isinstance(exc, MarginLensError):
        st.error(f"{exc}  \n(error id `{error_id}`)")
    else:
        st.error(f"Something went wrong on the server ({type(exc).__name__}). Reload the page to try again; if "
                 f"it keeps happening, tell whoever runs this dashboard the error id `{error_id}`: the details "
                 "are in the server's log.")
    return True
