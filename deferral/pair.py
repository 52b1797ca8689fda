"""Loading a drafter/target pair that shares a tokenizer.

Each model comes from a Hugging Face hub id, a local folder, or a path to a `.gguf` file. GGUF files
are dequantized by transformers into a dense model once, then cached as a plain Hugging Face folder
(keyed by the file's hash) so later loads take a second instead of a dequantization pass.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deferral.default_target import cache_dir, default_target_gguf
from deferral.errors import DeferralError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DRAFTER_ENV = "DEFERRAL_DEFAULT_DRAFTER"


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and a record of where it came from."""

    model: Any  # transformers PreTrainedModel, in eval mode
    tokenizer: Any
    source: str
    identity: dict = field(default_factory=dict)

    @property
    def vocab_rows(self) -> int:
        """Rows of the output embedding (may exceed len(tokenizer) when padded)."""
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", None) or 1 << 30)


@dataclass
class Pair:
    drafter: LoadedModel
    target: LoadedModel
    vocab_size: int  # the shared token range: logits of both models are cut to [:vocab_size]

    @property
    def tokenizer(self):
        return self.target.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.target.model.parameters()).device

    @property
    def max_context(self) -> int:
        return min(self.drafter.max_context, self.target.max_context)

    @property
    def pad_id(self) -> int:
        return pad_id_of(self.tokenizer)

    def identity(self) -> dict:
        return {"drafter": self.drafter.identity, "target": self.target.identity, "vocab_size": self.vocab_size}


def pad_id_of(tokenizer) -> int:
    """The id that fills left padding: the tokenizer's pad token, else its EOS, else 0 (padded
    positions are masked, so any id would do; one choice keeps every loop's batches alike)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation through the tokenizer's chat template, ready for the reply (the
    caller checks that the tokenizer has a template)."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    if hasattr(ids, "input_ids") or isinstance(ids, dict):  # some tokenizers return a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeferralError(f"--device {device} was asked for but no CUDA device is visible: use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise DeferralError(f"unknown device '{device}': use cpu, cuda, cuda:N or auto") from None


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise DeferralError(f"unknown dtype '{dtype}': choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def default_drafter_source() -> str:
    override = os.environ.get(DRAFTER_ENV)
    if override:
        return override
    from deferral.assets import asset_path

    drafter = asset_path("models", "default-drafter")
    if (drafter / "config.json").is_file():
        return str(drafter)
    raise DeferralError(
        "no default drafter is installed: pass --drafter (a Hugging Face id, a local folder or a .gguf file "
        "sharing the target's tokenizer)"
    )


def file_sha256(path: Path, _memo: dict = {}) -> str:
    """sha256 of a file, memoised per (path, size, mtime) within the process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _memo:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        _memo[key] = digest.hexdigest()
    return _memo[key]


def _weights_sha256(folder: Path) -> str | None:
    """One hash over a folder's weight files, or None when they are too large to hash quickly."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files or sum(f.stat().st_size for f in files) > 2 << 30:
        return None
    digest = hashlib.sha256()
    for f in files:
        digest.update(file_sha256(f).encode())
    return digest.hexdigest()


def _looks_like_hub_id(source: str) -> bool:
    """'name' or 'org/name', not a filesystem-looking path."""
    parts = source.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not source.startswith((".", "/", "~"))


def _require_gguf_package(path: Path) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise DeferralError(
            f"{path.name} is a GGUF file but the 'gguf' package is not installed: pip install 'gguf>=0.10'"
        )


def _dense_copy_of_gguf(path: Path, dtype: torch.dtype) -> Path:
    """Dequantize a GGUF file once into a cached Hugging Face folder; return the folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf_package(path)
    folder = cache_dir() / "dense" / f"{path.stem}-{file_sha256(path)[:16]}"
    if (folder / "done").is_file():
        return folder
    print(f"dequantizing {path.name} once into {folder} ...", file=sys.stderr)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for unsupported or corrupt files
        raise DeferralError(f"could not read GGUF file {path}: {type(exc).__name__}: {exc}") from None
    # The loaded model is dense but still flagged as GGUF-quantized, which blocks save_pretrained:
    # rebuild a plain model from the same config and weights.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dense = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    dense.load_state_dict(model.state_dict())
    partial = folder.with_name(folder.name + ".partial")
    dense.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / "done").write_text(str(path))
    if folder.exists():  # a concurrent writer finished first
        return folder
    partial.rename(folder)
    return folder


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_model(source: str, device: str = "cpu", dtype: str = "float32", role: str = "model") -> LoadedModel:
    """Load one causal LM and its tokenizer from a hub id, a local folder or a .gguf file."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    torch_dtype, torch_device = resolve_dtype(dtype), resolve_device(device)
    path = Path(os.path.expanduser(source))
    identity: dict = {"source": source}
    if source.endswith(".gguf"):
        if not path.is_file():
            raise DeferralError(f"{role} GGUF file {path} does not exist: check the path")
        identity.update(kind="gguf", sha256=file_sha256(path))
        folder = _dense_copy_of_gguf(path, torch_dtype)
        load_from, kwargs = str(folder), {}
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise DeferralError(f"{role} folder {path} has no config.json: point at a Hugging Face model folder")
        identity.update(kind="folder", sha256=_weights_sha256(path))
        load_from, kwargs = str(path), {}
    elif path.exists() or not _looks_like_hub_id(source):
        raise DeferralError(
            f"{role} '{source}' is neither an existing folder, a .gguf file nor a hub id (org/name): check the path"
        )
    else:
        identity.update(kind="hub", sha256=None)
        load_from, kwargs = source, {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(load_from, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(load_from, dtype=torch_dtype, **kwargs)
    except (OSError, SafetensorError) as exc:  # SafetensorError: a truncated or foreign .safetensors file
        hint = ("set HF_HUB_OFFLINE=0 and check network access" if identity["kind"] == "hub"
                else "re-download or re-save the model files")
        raise DeferralError(f"could not load {role} '{source}': {str(exc).splitlines()[0]} ({hint})") from None
    model.to(torch_device).eval()
    identity["config_sha256"] = hashlib.sha256(
        json.dumps(_config_for_hash(model.config), sort_keys=True).encode()
    ).hexdigest()
    identity["vocab_rows"] = int(model.get_output_embeddings().weight.shape[0])
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, identity=identity)


def _config_for_hash(config) -> dict:
    d = config.to_dict()
    for key in ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures"):
        d.pop(key, None)
    return d


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()


def check_same_tokenizer(drafter: LoadedModel, target: LoadedModel) -> None:
    d_vocab, t_vocab = drafter.tokenizer.get_vocab(), target.tokenizer.get_vocab()
    if d_vocab != t_vocab:
        raise DeferralError(
            f"drafter '{drafter.source}' ({len(d_vocab)} tokens) and target '{target.source}' "
            f"({len(t_vocab)} tokens) use different tokenizers: choose a drafter that shares the target's tokenizer"
        )


def load_pair(
    drafter: str | None = None, target: str | None = None, device: str = "cpu", dtype: str = "float32"
) -> Pair:
    """Load drafter and target (None = the embedded defaults) and check they share a tokenizer."""
    target_source = target if target else str(default_target_gguf())
    drafter_source = drafter if drafter else default_drafter_source()
    target_model = load_model(target_source, device, dtype, role="target")
    drafter_model = load_model(drafter_source, device, dtype, role="drafter")
    check_same_tokenizer(drafter_model, target_model)
    vocab = min(drafter_model.vocab_rows, target_model.vocab_rows)
    for m in (drafter_model, target_model):
        m.identity["tokenizer_sha256"] = tokenizer_fingerprint(m.tokenizer)
    return Pair(drafter=drafter_model, target=target_model, vocab_size=vocab)
