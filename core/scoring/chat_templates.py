"""Chat templates that replace a tokenizer's own (`marginlens score --chat-template NAME|FILE`).

Why: `--mode reference` renders the assistant turn on its own, as SimPO's preprocessing does, and gives
prompts an empty system turn. Gemma's own templates refuse both (roles must alternate; Gemma 2 has no
system role), so SimPO's Gemma-2-9b-it config swaps in a template that accepts them. `gemma-simpo`
below renders the same text as that override; the paper's Gemma runs are reproduced with

    marginlens score DATASET --policy google/gemma-2-9b-it --mode reference --chat-template gemma-simpo

What it renders: BOS, then per turn "<start_of_turn>ROLE\\n" + content trimmed + "<end_of_turn>\\n", the
assistant's ROLE written "model"; a leading system turn's content (trimmed, plus a blank line) is put
in front of the first remaining turn's content before that one is trimmed, so an empty system turn
leaves no trace; the generation prompt is "<start_of_turn>model\\n". For example [user "Hi"] with the
generation prompt -> "<bos><start_of_turn>user\\nHi<end_of_turn>\\n<start_of_turn>model\\n".

`mistral-simpo` is the Mistral template the authors' scoring script (infer_scripts/infer_dataset.py) swaps in
for any model whose path names "mistral", for the same reason: no BOS of its own (the tokenizer adds it), each
user turn "[INST] " + content trimmed + " [/INST]", each assistant turn " " + content trimmed + " " + EOS, a
leading system turn merged into the first remaining turn as above, other roles left out, and no generation
prompt (a prompt already ends in "[/INST]"). For example [user "Hi", assistant "Hello"] ->
"[INST] Hi [/INST] Hello </s>".

A template's text, not its name or path, is what a score table's fingerprint records.
"""

from __future__ import annotations

from pathlib import Path

from marginlens.core.errors import MarginLensError

GEMMA_SIMPO = (
    "{{ bos_token }}"
    "{% set ns = namespace(lead='', turns=messages) %}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set ns.lead = messages[0]['content'] | trim + '\\n\\n' %}{% set ns.turns = messages[1:] %}"
    "{% endif %}"
    "{% for turn in ns.turns %}"
    "{% set text = ns.lead + turn['content'] if loop.first else turn['content'] %}"
    "{% set role = 'model' if turn['role'] == 'assistant' else turn['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + text | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

MISTRAL_SIMPO = (
    "{% set ns = namespace(lead='', turns=messages) %}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set ns.lead = messages[0]['content'] | trim + '\\n\\n' %}{% set ns.turns = messages[1:] %}"
    "{% endif %}"
    "{% for turn in ns.turns %}"
    "{% set text = (ns.lead + turn['content'] if loop.first else turn['content']) | trim %}"
    "{% if turn['role'] == 'user' %}{{ '[INST] ' + text + ' [/INST]' }}"
    "{% elif turn['role'] == 'assistant' %}{{ ' ' + text + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

BUILTIN_TEMPLATES = {"gemma-simpo": GEMMA_SIMPO, "mistral-simpo": MISTRAL_SIMPO}


def read_chat_template(value: str) -> str:
    """The template text for a built-in name or a Jinja file; a clear error for anything else."""
    if value in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[value]
    path = Path(value).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MarginLensError(f"--chat-template {value!r}: no such file (built in: "
                              f"{', '.join(BUILTIN_TEMPLATES)})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MarginLensError(f"--chat-template {value!r}: cannot read it as text: {exc}") from None
    if not text.strip():
        raise MarginLensError(f"--chat-template {value!r}: the file is empty")
    return text
