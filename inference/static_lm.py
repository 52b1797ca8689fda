"""A fixed-size KV cache for Llama-family models, with CUDA graphs over its forward passes.

`StaticLM` has the interface of `CachedLM` (forward, rollback, select_rows, add_rows, length, valid,
hidden) and the same meaning: every row feeds the same number of tokens per call, entries a row does
not keep stay as masked "holes", and each row's rotary position counts only its valid tokens. What
differs is where the cache lives and who runs the layers:

- keys and values are preallocated, (B, n_kv_heads, C, head_dim) per layer for C columns, and a
  call writes its n columns at a cursor; rolling back moves the cursor and clears validity bits,
  nothing is copied. When the cursor would pass C, every row's valid entries are packed to the left
  (holes dropped) in place, only between decode steps (`reserve`): a step's roll-back reads the
  columns its forwards wrote as the last ones;
- the layers run from the model's own weights and modules (RMS norms as one fused op, the rotary
  embedding, the MLP's activation and down projection; q, k and v through one matmul over their
  concatenated weights, the MLP's gate and up through another), and attention is two batched
  matmuls and a softmax over the buffer under an additive (B, 1, g*n, C) mask, so a call's shapes depend on (B, n) only. On a
  CUDA device each (n, last_only, want_hidden) is captured once as a CUDA graph and replayed: a
  forward then costs one launch instead of hundreds, which is what bounds a small model's decoding
  on a GPU;
- with graphs, rows that finish stay in the buffers as dead rows (fed padding, masked): dropping
  them would change B and void every captured graph, and a launch-bound forward costs the same with
  them; a prompt that joins the batch takes a dead row. Without graphs finished rows are dropped as
  `CachedLM` drops them, and joining rows are appended.

Supported: `model_type` "llama" with a rotary embedding that depends on positions only (the
default pair and the SmolLM/Llama families); `supports_static` says so for a model.
"""

from __future__ import annotations

import time
import weakref

import torch
import torch.nn.functional as F

from inference.cached_lm import valid_columns_first

STATIC_MODEL_TYPES = ("llama",)
GRAPH_MAX_TOKENS = 16  # calls feeding more tokens (prefill, a sequential cascade's catch-up) run eagerly


def supports_static(model) -> bool:
    """True when StaticLM can run `model`: a Llama-architecture causal LM with position-only RoPE."""
    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    return (
        getattr(cfg, "model_type", None) in STATIC_MODEL_TYPES
        and rope_type in ("default", "linear", "llama3")
        and hasattr(getattr(model, "model", None), "rotary_emb")
    )


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


_FUSED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _concat(linears) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Several nn.Linear over the same input as one weight (sum of outputs, H) and bias (or None)."""
    weight = torch.cat([p.weight for p in linears]).detach()
    bias = None if linears[0].bias is None else torch.cat([p.bias for p in linears]).detach()
    return weight, bias


def _fused_weights(model) -> list[tuple[tuple, tuple]]:
    """Per layer, ((qkv weight, bias), (gate+up weight, bias)): the q, k and v projections as one
    matmul, and the MLP's gate and up projections as another. Built once per model and shared by
    every cache of it."""
    if model not in _FUSED:
        _FUSED[model] = [
            (_concat((layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)),
             _concat((layer.mlp.gate_proj, layer.mlp.up_proj)))
            for layer in model.model.layers
        ]
    return _FUSED[model]


def _rms_norm(norm, x: torch.Tensor) -> torch.Tensor:
    """A Llama RMSNorm module applied as one fused op where torch has one (one kernel on the GPU
    instead of six: a small model's forward is bound by its kernel count)."""
    return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)


class StaticLM:
    """A Llama-family causal LM over a preallocated KV cache of `capacity` columns for `batch` rows."""

    def __init__(self, model, vocab_size: int, batch: int, capacity: int, graphs: bool = False):
        cfg = model.config
        self.model, self.vocab_size = model, vocab_size
        self.layers = model.model.layers
        param = next(model.parameters())
        self.device, dtype = param.device, param.dtype
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.capacity = int(capacity)
        shape = (batch, self.n_kv, self.capacity, self.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in self.layers]
        self.values = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in self.layers]
        self._valid = torch.zeros(batch, self.capacity, dtype=torch.long, device=self.device)  # 1 = real entry
        self._positions = torch.zeros(batch, dtype=torch.long, device=self.device)  # (B,) valid tokens so far
        self._columns = torch.arange(self.capacity, device=self.device)  # (C,)
        self._start = torch.zeros((), dtype=torch.long, device=self.device)  # the cursor, as a graph input
        self.length = 0  # columns in use: the cursor
        self.rows = torch.arange(batch, device=self.device)  # physical row of each live row
        self.graphs = graphs and self.device.type == "cuda"
        self.keep_dead_rows = self.graphs  # the captured graphs hold the buffers' shapes: B stays
        self._captured: dict[tuple, tuple] = {}
        self.calls = 0
        self.hidden: torch.Tensor | None = None
        self.owner = None  # weakref to the decode loop using this cache (inference/engines.py)
        self.capture_s = 0.0  # seconds spent capturing graphs

    def reset(self) -> None:
        """Empty the cache for a new batch of `batch` rows; captured graphs stay valid (same buffers).
        Stale keys and values need no clearing: a column is read only once it is fed again."""
        self._valid.zero_()
        self._positions.zero_()
        self.length, self.calls, self.hidden = 0, 0, None
        self.rows = torch.arange(self._valid.shape[0], device=self.device)

    # ------------------------------------------------------------------ the interface of CachedLM
    @property
    def valid(self) -> torch.Tensor:
        """(B, L) validity of the columns in use, live rows only."""
        return self._valid[self.rows, : self.length]

    @property
    def positions(self) -> torch.Tensor:
        return self._positions[self.rows]

    def start_empty(self, batch: int) -> None:
        """Nothing to do: the buffers exist from the start (CachedLM needs this for 1-token prompts)."""

    @torch.inference_mode()
    def forward(
        self, tokens: torch.Tensor, valid: torch.Tensor | None = None, last_only: bool = False, want_hidden: bool = False
    ) -> torch.Tensor:
        """Feed (B, n) tokens for the live rows; `valid` (B, n) marks padding as 0. Returns float
        logits (B, n, V), or (B, 1, V) with `last_only`; final normed hidden states (B, n, H) in
        `self.hidden` with `want_hidden`."""
        n = tokens.shape[1]
        if valid is None:
            valid = torch.ones_like(tokens)
        self.reserve(n)
        tokens, valid = self._to_physical(tokens, 0), self._to_physical(valid, 0)
        end = self.length + n
        self._valid[:, self.length : end] = valid
        position_ids = (self._positions[:, None] + valid.cumsum(-1) - 1).clamp_min(0)  # (Bp, n)
        if self.graphs and n <= GRAPH_MAX_TOKENS:
            logits, hidden = self._replay(tokens, position_ids, n, last_only, want_hidden)
        else:
            logits, hidden = self._layers(tokens, position_ids, torch.tensor(self.length, device=self.device),
                                          end, last_only, want_hidden)
        self._positions += valid.sum(-1)
        self.length = end
        self.calls += 1
        self.hidden = self._live(hidden) if want_hidden else None
        return self._live(logits)[..., : self.vocab_size].float()

    def reserve(self, columns: int) -> None:
        """Make room for `columns` more columns before a decode step's forwards: packing the rows (or
        growing) inside a step would move the columns its earlier forwards wrote, which the step's
        roll-back then reads as its last `fed` columns."""
        if self.length + columns > self.capacity:
            self._compact()
            if self.length + columns > self.capacity:
                self._grow(self.length + columns)

    @torch.inference_mode()
    def rollback(self, fed: int, kept: torch.Tensor, longest: int | None = None) -> None:
        """Of the last `fed` columns fed, live row i keeps its first kept[i]; the rest become holes.
        `longest` (max(kept), known on the host) moves the cursor back without reading the GPU;
        without it the cursor goes back to the last column any row uses (one host sync)."""
        if fed <= 0:
            return
        kept = self._to_physical(kept, 0)  # dead rows fed nothing valid: nothing to drop
        offsets = torch.arange(fed, device=self.device)[None, :]  # (1, fed)
        tail = self._valid[:, self.length - fed : self.length]  # a view: masking it edits the buffer
        dropped = tail * (offsets >= kept[:, None]).long()  # (Bp, fed)
        self._positions -= dropped.sum(-1)
        tail -= dropped
        if longest is not None:  # columns past it were just dropped by every row
            self.length -= fed - min(max(int(longest), 0), fed)
            return
        used = self._valid[:, : self.length].any(0).nonzero()
        self.length = int(used.max()) + 1 if used.numel() else 0  # trailing unused columns: the cursor moves back

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the given live rows (B',) int64 (finished rows leave the batch)."""
        if self.keep_dead_rows:
            self.rows = self.rows[rows]
            return
        keep = self.rows[rows]
        self.keys = [k[keep] for k in self.keys]
        self.values = [v[keep] for v in self.values]
        self._valid, self._positions = self._valid[keep], self._positions[keep]
        self.rows = torch.arange(len(keep), device=self.device)

    def add_rows(self, m: int) -> None:
        """Append m empty live rows: dead physical rows are reused (graphs stay valid); beyond them the
        buffers grow by the missing rows (and captured graphs are dropped)."""
        physical = self._valid.shape[0]
        live = set(self.rows.tolist())
        free = [r for r in range(physical) if r not in live][:m]
        if len(free) < m:
            extra = m - len(free)
            grow = lambda t: torch.cat([t, t.new_zeros((extra, *t.shape[1:]))])  # noqa: E731
            self.keys, self.values = [grow(k) for k in self.keys], [grow(v) for v in self.values]
            self._valid, self._positions = grow(self._valid), grow(self._positions)
            free += range(physical, physical + extra)
            self._captured.clear()
        index = torch.tensor(free, device=self.device)
        self._valid[index] = 0  # a reused row's old entries become holes
        self._positions[index] = 0
        self.rows = torch.cat([self.rows, index])

    def join(self, tokens: torch.Tensor, valid: torch.Tensor) -> None:
        """Append m rows fed `tokens` (m, w) (`valid` marks their left padding), in one forward in
        which the present rows feed holes: with graphs every physical row runs anyway."""
        b = len(self.rows)
        self.add_rows(tokens.shape[0])
        padding = tokens.new_zeros((b, tokens.shape[1]))
        self.forward(torch.cat([padding, tokens]), torch.cat([padding, valid]), last_only=True)

    # ------------------------------------------------------------------ internals
    @property
    def rows(self) -> torch.Tensor:
        """(B',) the physical row of each live row, in the decode loop's row order."""
        return self._rows

    @rows.setter
    def rows(self, rows: torch.Tensor) -> None:
        self._rows = rows
        self._identity = len(rows) == self._valid.shape[0] and bool((rows == torch.arange(len(rows), device=rows.device)).all())

    def _to_physical(self, x: torch.Tensor, fill: int) -> torch.Tensor:
        """(B', ...) values of the live rows -> (Bp, ...) over every physical row (dead rows: fill)."""
        if self._identity:
            return x
        full = torch.full((self._valid.shape[0], *x.shape[1:]), fill, dtype=x.dtype, device=x.device)
        full[self.rows] = x
        return full

    def _live(self, x: torch.Tensor) -> torch.Tensor:
        return x if self._identity else x[self.rows]

    def _compact(self) -> None:
        """Pack every row's valid columns to the left, in order, in place (graphs keep their buffers)."""
        width = self.length
        valid = self._valid[:, :width]
        order = valid_columns_first(valid)  # (Bp, L)
        index = order[:, None, :, None].expand(-1, self.n_kv, -1, self.head_dim)
        for buffers in (self.keys, self.values):
            for buf in buffers:
                buf[:, :, :width].copy_(buf[:, :, :width].gather(2, index))
        valid.copy_(valid.gather(-1, order))
        self.length = int(valid.sum(-1).max())

    def _grow(self, needed: int) -> None:
        """Room for `needed` columns: bigger buffers (captured graphs are dropped and recaptured)."""
        extra = needed - self.capacity + 64
        pad = lambda t: torch.cat([t, t.new_zeros(*t.shape[:-2], extra, t.shape[-1])], dim=-2)  # noqa: E731
        self.keys = [pad(k) for k in self.keys]
        self.values = [pad(v) for v in self.values]
        self._valid = torch.cat([self._valid, self._valid.new_zeros(self._valid.shape[0], extra)], dim=-1)
        self.capacity += extra
        self._columns = torch.arange(self.capacity, device=self.device)
        self._captured.clear()

    def _layers(self, tokens, position_ids, start: torch.Tensor, end: int | None, last_only: bool, want_hidden: bool):
        """The model over (Bp, n) tokens written at columns start.. of the cache. `end` (a Python
        int) limits attention to the columns in use; None attends over the whole buffer (graphs).
        Returns logits (Bp, n or 1, V) and, with want_hidden, normed hidden states (Bp, n, H).

        Written for few kernels, since a small model's step is bound by their number: one matmul
        for q, k and v and one for the MLP's gate and up (weights concatenated once), fused RMS
        norms, one rotary pass over q and k together, and attention as two batched matmuls and a
        softmax under an additive mask built once per call (a masked fused-attention kernel costs
        more than all three at these sizes)."""
        inner = self.model.model
        b, n = tokens.shape
        hq, hkv, d = self.n_heads, self.n_kv, self.head_dim
        groups = hq // hkv
        width = self.capacity if end is None else end
        cols = start + torch.arange(n, device=self.device)  # (n,) columns written by this call
        keys_at = self._columns[:width]
        # Query i sees valid columns up to its own, and always itself (a padding query would otherwise
        # see nothing and give NaN).
        causal = keys_at[None, :] <= cols[:, None]  # (n, W)
        seen = causal[None] & (self._valid[:, None, :width].bool() | (keys_at[None, :] == cols[:, None])[None])
        h = inner.embed_tokens(tokens)  # (Bp, n, H)
        bias = torch.zeros(seen.shape, dtype=h.dtype, device=self.device).masked_fill_(~seen, float("-inf"))
        bias = bias[:, None, None].expand(b, 1, groups, n, width).reshape(b, 1, groups * n, width)  # (Bp, 1, g*n, W)
        cos, sin = inner.rotary_emb(h, position_ids=position_ids)  # (Bp, n, D) each
        cos, sin = cos[:, :, None], sin[:, :, None]  # (Bp, n, 1, D): broadcast over heads
        for layer, ((w_qkv, b_qkv), (w_gate_up, b_gate_up)), k_buf, v_buf in zip(
            self.layers, _fused_weights(self.model), self.keys, self.values
        ):
            attn, mlp = layer.self_attn, layer.mlp
            qkv = F.linear(_rms_norm(layer.input_layernorm, h), w_qkv, b_qkv).view(b, n, hq + 2 * hkv, d)
            qk = qkv[:, :, : hq + hkv]
            qk = qk * cos + _rotate_half(qk) * sin  # (Bp, n, Hq + Hkv, D)
            q = qk[:, :, :hq].transpose(1, 2)  # (Bp, Hq, n, D)
            k_buf.index_copy_(2, cols, qk[:, :, hq:].transpose(1, 2))  # (Bp, Hkv, n, D) into the cache
            v_buf.index_copy_(2, cols, qkv[:, :, hq + hkv :].transpose(1, 2))
            # Query head j reads kv head j // g (as transformers' repeat_kv): group the queries instead
            # of repeating the cache: (Bp, Hkv, g*n, D).
            q = q.reshape(b, hkv, groups * n, d) * attn.scaling
            scores = torch.matmul(q, k_buf[:, :, :width].transpose(-1, -2)) + bias  # (Bp, Hkv, g*n, W)
            o = torch.matmul(torch.softmax(scores.float(), dim=-1).to(q.dtype), v_buf[:, :, :width])
            o = o.reshape(b, hq, n, d).transpose(1, 2).reshape(b, n, hq * d)
            h = h + attn.o_proj(o)
            gate, up = F.linear(_rms_norm(layer.post_attention_layernorm, h), w_gate_up, b_gate_up).chunk(2, dim=-1)
            h = h + mlp.down_proj(mlp.act_fn(gate) * up)  # (Bp, n, H)
        h = _rms_norm(inner.norm, h)
        logits = self.model.lm_head(h[:, -1:] if last_only else h)
        return logits, (h if want_hidden else None)

    def _replay(self, tokens, position_ids, n: int, last_only: bool, want_hidden: bool):
        """Run the captured graph for this call's shape (capturing it on first use); outputs cloned,
        since the next replay overwrites them."""
        key = (n, last_only, want_hidden)
        if key not in self._captured:
            self._captured[key] = self._capture(tokens, position_ids, last_only, want_hidden)
        graph, static_tokens, static_positions, logits, hidden = self._captured[key]
        static_tokens.copy_(tokens)
        static_positions.copy_(position_ids)
        self._start.fill_(self.length)
        graph.replay()
        return logits.clone(), (hidden.clone() if want_hidden else None)

    def _capture(self, tokens, position_ids, last_only: bool, want_hidden: bool):
        start = time.perf_counter()
        static_tokens, static_positions = tokens.clone(), position_ids.clone()
        self._start.fill_(self.length)
        run = lambda: self._layers(static_tokens, static_positions, self._start, None, last_only, want_hidden)  # noqa: E731
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up outside the graph (writes the same columns the call writes)
            run()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits, hidden = run()
        self.capture_s += time.perf_counter() - start
        return graph, static_tokens, static_positions, logits, hidden
