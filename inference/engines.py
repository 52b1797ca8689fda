"""Which forward pass and KV cache a decode loop runs its models with (`--engine`)."""

from __future__ import annotations

import weakref

from deferral.errors import DeferralError
from inference.cached_lm import CachedLM
from inference.static_lm import StaticLM, supports_static

ENGINES = ("auto", "hf", "static", "graphs")
ENGINE_HELP = (
    "hf: transformers' forward over a growing cache (any architecture); static: a preallocated cache and "
    "one attention call over it (Llama family); graphs: static with CUDA graphs (CUDA only); auto: graphs on "
    "a CUDA device where the model is supported, hf otherwise"
)


def resolve_engine(engine: str, model) -> str:
    """The engine a model runs with: `auto` resolved, and a clear error where the choice cannot run."""
    if engine not in ENGINES:
        raise DeferralError(f"unknown --engine '{engine}': choose one of {', '.join(ENGINES)}")
    cuda = next(model.parameters()).device.type == "cuda"
    if engine == "auto":
        return "graphs" if cuda and supports_static(model) else "hf"
    if engine != "hf" and not supports_static(model):
        raise DeferralError(
            f"--engine {engine} runs Llama-architecture models only, and this one is "
            f"'{getattr(model.config, 'model_type', '?')}': use --engine hf"
        )
    if engine == "graphs" and not cuda:
        raise DeferralError("--engine graphs needs a CUDA device: add --device cuda, or use --engine static")
    return engine


def cache_capacity(prompts: list[list[int]], max_new_tokens: int, draft_tokens: int, multiple: int = 64) -> int:
    """Columns a static cache starts with: the longest prompt, the budget, two blocks of drafts and
    some room for holes, rounded up to `multiple` (a static cache packs its rows when it runs out)."""
    need = max(len(p) for p in prompts) + max_new_tokens + 2 * (draft_tokens + 2) + 32
    return -(-need // multiple) * multiple


# Graphed caches are kept for the next decode loop of the same model and batch size: capturing a
# model's graphs costs tens of milliseconds each, as much as decoding a few dozen tokens. A cache is
# free once the loop that took it (its owner) is gone. At most POOL_SIZE are kept per model.
POOL_SIZE = 4
_pool: dict[int, list[StaticLM]] = {}


def _graphed_lm(model, vocab_size: int, batch: int, capacity: int, owner) -> StaticLM:
    kept = _pool.setdefault(id(model), [])
    kept[:] = [lm for lm in kept if lm.model is model]  # an id reused by another model
    free = [lm for lm in kept if lm.owner is None or lm.owner() is None]
    fits = [lm for lm in free if lm.keys[0].shape[0] == batch and lm.capacity >= capacity and lm.vocab_size == vocab_size]
    if fits:
        lm = fits[0]
        lm.reset()
    else:
        lm = StaticLM(model, vocab_size, batch, capacity, graphs=True)
        kept.append(lm)
        if len(kept) > POOL_SIZE and free:  # while more are in use at once, the pool holds them all
            kept.remove(free[0])
    lm.owner = weakref.ref(owner)
    return lm


def open_lm(model, vocab_size: int, engine: str, prompts: list[list[int]], max_new_tokens: int,
            draft_tokens: int = 1, owner=None):
    """A CachedLM or StaticLM for decoding `prompts` (one row each) with `model`; `owner` (the decode
    loop's state) holds a graphed cache until it is garbage."""
    engine = resolve_engine(engine, model)
    if engine == "hf":
        return CachedLM(model, vocab_size)
    if engine == "graphs" and owner is not None:
        capacity = cache_capacity(prompts, max_new_tokens, draft_tokens, multiple=256)
        return _graphed_lm(model, vocab_size, len(prompts), capacity, owner)
    capacity = cache_capacity(prompts, max_new_tokens, draft_tokens)
    return StaticLM(model, vocab_size, len(prompts), capacity, graphs=engine == "graphs")
