"""Tiny real models for tests: built from a config with a locally trained tokenizer, saved, and
loaded back through the real from_pretrained path. Reusable from any test module:

    from tiny_models import tiny_llama, tiny_gpt2  # noqa: F401  (session fixtures)
    def test_x(tiny_llama): model_folder = tiny_llama   # a Path to a saved model folder

Also: the SmolLM2 folder converted once into the repo's .cache/models (gitignored, survives test
runs) through the same core.scoring.models function the product uses (`smollm2_test_folder`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REPO_MODEL_CACHE = REPO / ".cache" / "models"

CHATML_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_WORDS = (
    "the a capital of France is Paris Berlin what how why when who answer question explain please thanks "
    "model data pair chosen rejected reward margin policy token sum mean log probability great bad good "
    "one two three four five six seven eight nine ten hundred thousand colour blue green red yellow "
    "write code python function return value list dict string number error file folder path"
).split()


def corpus(n: int = 400) -> list[str]:
    """Deterministic English-ish sentences, with digits and punctuation, to train the tokenizer on."""
    lines = []
    for i in range(n):
        words = [_WORDS[(i * 7 + j * 13) % len(_WORDS)] for j in range(5 + i % 11)]
        lines.append(" ".join(words).capitalize() + f" {i}{'?' if i % 3 else '.'} ünï {i % 10}")
    return lines


def build_tokenizer(folder: Path, chat: bool = True, vocab_size: int = 400):
    """Train a byte-level BPE tokenizer locally (any text encodes) and save it to `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|bos|>", "<|pad|>", "<|im_start|>", "<|im_end|>"] if chat else ["<|endoftext|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    if chat:
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|im_end|>",
                                       pad_token="<|pad|>")
        fast.chat_template = CHATML_TEMPLATE
    else:
        # GPT-2 style: one special token for everything, no pad token, no chat template.
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    fast.save_pretrained(folder)
    return fast


def make_tiny_llama(folder: Path, chat: bool = True, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(folder, chat=chat)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, initializer_range=0.3, tie_word_embeddings=False)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def make_tiny_gpt2(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_tokenizer(folder, chat=False)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=1024,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        initializer_range=0.3)
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def make_tiny_classifier(folder: Path, num_labels: int = 1, seed: int = 0) -> Path:
    """A Llama sequence classifier: a reward model with one label, a plain classifier otherwise."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = build_tokenizer(folder, chat=True)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=num_labels,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, initializer_range=0.3)
    torch.manual_seed(seed)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    return folder


# Tests' torch runs in one thread. These machines are small and shared: with several processes
# each spinning two OpenMP threads, a tiny model's batch takes ~20x longer than with one thread.
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def single_thread() -> None:
    """One torch thread here, and in the job workers this process starts (they inherit the env)."""
    import torch

    os.environ.update(ONE_THREAD_ENV)
    torch.set_num_threads(1)


def use_repo_model_cache() -> Path:
    """Point core.scoring.models (and the job workers this process starts) at the repo's model cache."""
    REPO_MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    os.environ["MARGINLENS_MODEL_CACHE"] = str(REPO_MODEL_CACHE)
    return REPO_MODEL_CACHE


def smollm2_test_folder() -> Path:
    from marginlens.core.scoring.models import smollm2_folder

    return smollm2_folder(use_repo_model_cache())


def pairs_of_mixed_lengths(n: int = 12, seed: int = 0) -> list[dict]:
    """(prompt messages, chosen, rejected) with prompts and responses of very different lengths."""
    import random

    rng = random.Random(seed)
    lines = corpus()
    out = []
    for i in range(n):
        def text(k: int) -> str:
            return " ".join(rng.choice(lines) for _ in range(k))
        prompt = [{"role": "user", "content": text(1 + rng.randrange(6))}]
        if i % 3 == 0:
            prompt = [{"role": "system", "content": "Be brief."}, *prompt]
        if i % 4 == 1:
            prompt = [*prompt, {"role": "assistant", "content": text(1)}, {"role": "user", "content": "And?"}]
        out.append({"prompt": prompt, "chosen": text(rng.randrange(1, 8)), "rejected": text(rng.randrange(0, 4))})
    out[0]["rejected"] = ""  # an empty response still has its end-of-turn/EOS to score
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_reward(tmp_path_factory) -> Path:
    return make_tiny_classifier(tmp_path_factory.mktemp("tiny-reward"), num_labels=1)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return smollm2_test_folder()


def conversational_records(n: int = 12, seed: int = 0, scores: bool = True) -> list[dict]:
    """TRL-conversational records (for core.data.ingest) built from `pairs_of_mixed_lengths`."""
    out = []
    for i, d in enumerate(pairs_of_mixed_lengths(n, seed)):
        record = {"prompt": d["prompt"], "chosen": [{"role": "assistant", "content": d["chosen"] or "Fine."}],
                  "rejected": [{"role": "assistant", "content": d["rejected"] or "No."}]}
        if scores:
            record.update(score_chosen=float(i % 7), score_rejected=float(i % 3))
        out.append(record)
    return out
