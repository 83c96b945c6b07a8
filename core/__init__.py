"""MarginLens core library: ingestion, scoring, metrics, selection, export, audit, training.

Never imports streamlit: everything the dashboard does is reachable from here and the CLI.
"""

__version__ = "0.1.0"
