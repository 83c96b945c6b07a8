"""Streamlit glue: the entry point, cached readers, shared widgets. Pages read through here and act through core."""
