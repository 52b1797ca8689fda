"""A causal LM with a KV cache that can hold "holes", so batch rows can accept different numbers of tokens.

Every row feeds the same number of tokens per forward call (lockstep), which keeps the cache a
plain rectangular DynamicCache. Entries a row does not keep (left padding of short prompts, drafts
it rejected) stay in the cache but are masked out of attention, and each row's rotary position
counts only its valid tokens. Trailing columns that are invalid in every row are cropped away, so
at batch size 1 the cache always equals a fresh forward pass over the accepted prefix.
"""

from __future__ import annotations

import inspect

import torch


def valid_columns_first(valid: torch.Tensor) -> torch.Tensor:
    """(B, L) validity -> (B, L) column order that puts each row's valid columns first, in their order
    (packing a cache's rows to the left: gather its columns in this order)."""
    return torch.argsort(1 - valid, dim=-1, stable=True)


def _splice(present: torch.Tensor, joining: torch.Tensor, length: int) -> torch.Tensor:
    """(B, H, L, D) entries of the present rows and (m, H, w, D) of joining rows -> (B + m, H, L + w, D):
    the present rows get w hole columns after theirs, the joining rows L before theirs."""
    b, m, w = present.shape[0], joining.shape[0], joining.shape[2]
    present = torch.cat([present[:, :, :length], present.new_zeros((b, *present.shape[1:2], w, present.shape[3]))], 2)
    joining = torch.cat([joining.new_zeros((m, *joining.shape[1:2], length, joining.shape[3])), joining], 2)
    return torch.cat([present, joining])


def _cache_kwarg(model) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache`; support both."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _supports_logits_to_keep(model) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


class CachedLM:
    """Wraps a transformers causal LM for incremental decoding over a batch of rows.

    Invariant between steps: the cache holds every committed token of a row except its last one,
    which is fed at the start of the next forward call.
    """

    def __init__(self, model, vocab_size: int):
        from transformers import DynamicCache

        self.model = model
        self.vocab_size = vocab_size
        self._cache_kwarg = _cache_kwarg(model)
        self._logits_to_keep = _supports_logits_to_keep(model)
        self.cache = DynamicCache(config=model.config)
        self.device = next(model.parameters()).device
        self.valid = torch.zeros(0, 0, dtype=torch.long, device=self.device)  # (B, L) 1 = real entry
        self.positions = torch.zeros(0, dtype=torch.long, device=self.device)  # (B,) valid tokens so far
        self.calls = 0
        self.hidden: torch.Tensor | None = None  # (B, n, H) last hidden state of the latest call, if asked

    def start_empty(self, batch: int) -> None:
        """Row bookkeeping for `batch` rows before anything is fed (prompts of one token)."""
        self.valid = torch.zeros(batch, 0, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(batch, dtype=torch.long, device=self.device)

    @torch.inference_mode()
    def forward(
        self, tokens: torch.Tensor, valid: torch.Tensor | None = None, last_only: bool = False, want_hidden: bool = False
    ) -> torch.Tensor:
        """Feed (B, n) tokens; `valid` (B, n) marks padding as 0. Returns (B, n, V) float logits, or
        (B, 1, V) for the last position only with `last_only` (skips the output projection elsewhere,
        which dominates a small model's cost and a long prefill's). With `want_hidden` the final
        (normalised) hidden states of the fed positions are kept in `self.hidden`: (B, n, H)."""
        b, n = tokens.shape
        if valid is None:
            valid = torch.ones(b, n, dtype=torch.long, device=self.device)
        if self.valid.numel() == 0:
            self.valid = torch.zeros(b, 0, dtype=torch.long, device=self.device)
            self.positions = torch.zeros(b, dtype=torch.long, device=self.device)
        position_ids = self.positions[:, None] + valid.cumsum(-1) - 1  # (B, n)
        self.valid = torch.cat([self.valid, valid], dim=-1)
        extra = {"logits_to_keep": 1} if last_only and self._logits_to_keep else {}
        out = self.model(
            input_ids=tokens,
            attention_mask=self.valid,
            position_ids=position_ids.clamp_min(0),
            use_cache=True,
            output_hidden_states=want_hidden,
            **{self._cache_kwarg: self.cache},
            **extra,
        )
        self.hidden = out.hidden_states[-1] if want_hidden else None
        self.positions = self.positions + valid.sum(-1)
        self.calls += 1
        logits = out.logits[..., : self.vocab_size]
        return (logits[:, -1:] if last_only else logits).float()

    @torch.inference_mode()
    def rollback(self, fed: int, kept: torch.Tensor, longest: int | None = None) -> None:
        """Of the last `fed` columns fed, row i keeps its first kept[i]; the rest become holes.

        kept: (B,) int64 in [0, fed]. Columns that were already holes stay holes. `longest`
        (max(kept), known on the host) sets how many trailing columns to crop without reading the
        GPU; without it the cache is cropped after the last column any row uses (one host sync).
        """
        if fed <= 0:
            return
        offsets = torch.arange(fed, device=self.device)[None, :]  # (1, fed)
        tail = self.valid[:, -fed:]  # a view: masking it edits self.valid
        dropped = tail * (offsets >= kept[:, None]).long()  # (B, fed) valid entries now rejected
        self.positions = self.positions - dropped.sum(-1)
        tail -= dropped
        # Drop trailing columns that no row uses (at batch size 1: every rejected column).
        if longest is not None:
            length = self.valid.shape[1] - fed + min(max(int(longest), 0), fed)
        else:
            used = self.valid.any(0).nonzero()
            length = int(used.max()) + 1 if used.numel() else 0
        if length < self.valid.shape[1] and self.valid.shape[0] > 0:
            self._crop_to(length)

    def _filled_layers(self) -> list:
        """The cache's layers that hold (B, H, L, D) keys and values (none before the first forward;
        they stay 4-D when every row has left)."""
        return [layer for layer in self.cache.layers if getattr(layer, "keys", None) is not None and layer.keys.dim() == 4]

    def _crop_to(self, length: int) -> None:
        for layer in self._filled_layers():
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]
        self.valid = self.valid[:, :length]

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (finished rows leave the batch). rows: (B',) int64."""
        for layer in self._filled_layers():
            layer.keys = layer.keys[rows]
            layer.values = layer.values[rows]
        self.valid = self.valid[rows]
        self.positions = self.positions[rows]

    def add_rows(self, m: int) -> None:
        """Append m empty rows (joining prompts of one token, which need no prefill; longer ones
        `join`). A cache holding more than twice the columns its fullest row uses is packed first,
        so a long stream of joining prompts keeps it bounded."""
        self.compact(slack=2.0)
        for layer in self._filled_layers():
            layer.keys = torch.cat([layer.keys, layer.keys.new_zeros((m, *layer.keys.shape[1:]))])
            layer.values = torch.cat([layer.values, layer.values.new_zeros((m, *layer.values.shape[1:]))])
        self.valid = torch.cat([self.valid, self.valid.new_zeros((m, self.valid.shape[1]))])
        self.positions = torch.cat([self.positions, self.positions.new_zeros(m)])

    @torch.inference_mode()
    def join(self, tokens: torch.Tensor, valid: torch.Tensor) -> None:
        """Append m rows fed `tokens` (m, w) (`valid` marks their left padding): a forward over the
        joining rows alone, whose cache is spliced in after the present columns (the present rows see
        holes there, the joining rows holes before). Feeding every row, the others padding, would cost
        B + m rows of prefill where m are needed, which on a CPU is most of a join's time."""
        self.compact(slack=2.0)
        fresh = CachedLM(self.model, self.vocab_size)
        fresh.forward(tokens, valid, last_only=True)
        b, length, (m, w) = self.valid.shape[0], self.length, tokens.shape
        if self._filled_layers():
            for layer, new in zip(self.cache.layers, fresh.cache.layers):
                layer.keys, layer.values = (_splice(old, added, length) for old, added in
                                            ((layer.keys, new.keys), (layer.values, new.values)))
        else:  # nothing fed yet: the joining rows' cache, behind b rows of holes
            for layer in fresh.cache.layers:
                layer.keys, layer.values = (torch.cat([t.new_zeros((b, *t.shape[1:])), t]) for t in (layer.keys, layer.values))
            self.cache = fresh.cache
        zeros = self.valid.new_zeros
        self.valid = torch.cat([torch.cat([self.valid, zeros((b, w))], 1), torch.cat([zeros((m, length)), fresh.valid], 1)])
        self.positions = torch.cat([self.positions, fresh.positions])
        self.calls += 1

    def reserve(self, columns: int) -> None:
        """Nothing to do: this cache grows as it is fed (StaticLM needs this before a decode step)."""

    def compact(self, slack: float = 1.0) -> None:
        """Pack each row's valid entries to the left, in order, and drop the columns no row then uses,
        if the cache holds more than `slack` times the columns its fullest row needs (one host sync).
        Keys are stored after their rotary embedding, so moving them changes no position."""
        if not self.valid.numel():
            return
        width = int(self.valid.sum(-1).max())
        if self.valid.shape[1] <= slack * width:
            return
        order = valid_columns_first(self.valid)[:, :width]  # (B, W)
        for layer in self._filled_layers():
            index = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
            layer.keys, layer.values = layer.keys.gather(2, index), layer.values.gather(2, index)
        self.valid = self.valid.gather(-1, order)

    @property
    def length(self) -> int:
        """Columns in the cache (valid entries plus holes)."""
        return int(self.valid.shape[1])
