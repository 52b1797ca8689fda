"""Cascade logging: rows taken from the decode loop's own verified blocks, labelled by consequence.

`deferral log --mode cascade` runs a speculative cascade (the `--generator` rule, lossless
speculative decoding by default) on prompts cut from the corpus. Every verified block is seen by a
`BlockCollector` before the rule decides: each of its k drafted positions becomes a row whose
features come from exactly the tensors, and the function, that the learned rule uses at decode time
(`deferral.features.compute_features` with the block's look-ahead and hidden states), so there is
no train/serve skew and the text is the cascade's own (on-policy). The reference token of the
usual labels is the target's greedy choice at that position; consequence labels (see
training/logs/consequence.py) come from target roll-outs after both choices.

Pure apart from running the models: no files, no flags.
"""

from __future__ import annotations

import numpy as np
import torch

from deferral.features import FeatureSpec, block_lookahead, compute_features
from deferral.labels import labels_with_features
from deferral.pair import Pair
from inference.config import DecodeConfig
from inference.runner import encode_prompts, token_space
from inference.speculative import Block, speculative_generate
from training.logs.consequence import RolloutConfig, consequence_labels
from training.logs.mixed_corpus import CHAT_MARKER

MIN_CONTEXT_LINES = 3  # a cut keeps at least this many lines of context before it
REFERENCE_LINES = 4  # the document's lines after a cut that the reference-based label compares with


class BlockCollector:
    """Observer of the decode loop: turns every verified block into rows (features, ids, contexts)."""

    def __init__(self, spec: FeatureSpec, doc_ids: list[int]):
        self.spec = spec
        self.doc_ids = doc_ids  # doc id of each prompt of the current decode call
        self.hidden_needed = tuple(
            role for role, width in (("drafter", spec.drafter_hidden), ("target", spec.target_hidden)) if width
        )
        self.parts: list[dict[str, np.ndarray]] = []
        self.contexts: list[list[int]] = []
        # per prompt of the current decode call: its length and its document's real continuation
        self.prompt_lens: list[int] = []
        self.references: list[str | None] = []
        # per row: the tokens generated before the drafted position, and the reference of its prompt
        self.generated: list[list[int]] = []
        self.row_references: list[str | None] = []

    @torch.inference_mode()
    def __call__(self, block: Block) -> None:
        b, k = block.drafts.shape
        q = block.q_logits.flatten(0, 1)  # (B·k, V)
        p = block.p_logits[:, :k].flatten(0, 1)
        drafted = block.drafts.flatten()  # (B·k,)
        spec = self.spec
        features = compute_features(
            q, p, drafted[:, None],
            block.drafter_hidden.flatten(0, 1) if spec.drafter_hidden else None,
            block.target_hidden[:, :k].flatten(0, 1) if spec.target_hidden else None,
            block_lookahead(block.p_logits[:, :k], block.drafts) if spec.lookahead else None,
        )[:, 0]  # (B·k, F)
        p_arg = p.argmax(-1)
        labels = labels_with_features(features, spec.names, q, p, p_arg, drafted)
        drafts = block.drafts.tolist()
        positions = []
        for r in range(b):
            prompt_len = self.prompt_lens[block.rows[r]] if self.prompt_lens else len(block.context[r])
            for j in range(k):
                self.contexts.append(block.context[r] + drafts[r][:j])
                self.generated.append(self.contexts[-1][prompt_len:])
                self.row_references.append(self.references[block.rows[r]] if self.references else None)
                positions.append(len(block.context[r]) + j)
        self.parts.append({
            "doc_id": np.repeat([self.doc_ids[i] for i in block.rows], k),
            "position": np.asarray(positions),
            "token_id": p_arg.cpu().numpy(),
            "drafted_id": drafted.cpu().numpy(),
            "features": features.cpu().numpy(),
            **{name: value.cpu().numpy() for name, value in labels.items()},
        })

    def rows(self) -> dict[str, np.ndarray]:
        return {key: np.concatenate([part[key] for part in self.parts]) for key in self.parts[0]}


def cut_document(pair: Pair, doc_id: int, text: str, prompt_tokens: int, seed: int) -> tuple[list[int], str | None]:
    """(prompt ids, reference) for one document: a chat instruction goes through the chat template
    and has no reference; other text is cut before a line boundary drawn deterministically from
    (doc_id, seed): the prompt ends at a line end without its newline, like the evaluation tasks'
    prompts, left-truncated to prompt_tokens tokens, and the reference is that newline plus the next
    REFERENCE_LINES lines (None when the cut is at the end of the document)."""
    tok = pair.tokenizer
    if text.startswith(CHAT_MARKER):
        return encode_prompts(pair, [text[len(CHAT_MARKER):]], chat=True)[0][-prompt_tokens:], None
    lines = text.split("\n")
    rng = np.random.default_rng([seed, doc_id])
    cut = int(rng.integers(min(MIN_CONTEXT_LINES, len(lines)), max(len(lines), MIN_CONTEXT_LINES + 1)))
    ids = tok("\n".join(lines[:cut]), add_special_tokens=True)["input_ids"]
    after = lines[cut : cut + REFERENCE_LINES]
    reference = "\n" + "\n".join(after) if after and "".join(after).strip() else None
    return [int(i) for i in ids][-prompt_tokens:], reference


def cut_prompt(pair: Pair, doc_id: int, text: str, prompt_tokens: int, seed: int) -> list[int]:
    """The prompt ids of cut_document."""
    return cut_document(pair, doc_id, text, prompt_tokens, seed)[0]


def cascade_chunk(pair: Pair, documents: list[tuple[int, str]], cfg, spec: FeatureSpec, progress=None) -> dict | None:
    """Rows of one chunk of (doc_id, text) documents under `cfg` (a LogConfig in cascade mode);
    None when no document yields a prompt."""
    from deferral.rules import make_rule

    cuts = [(doc_id, *cut_document(pair, doc_id, text, cfg.prompt_tokens, cfg.seed)) for doc_id, text in documents]
    cuts = [(doc_id, ids, ref) for doc_id, ids, ref in cuts if ids]
    prompts = [(doc_id, ids) for doc_id, ids, _ in cuts]
    references = [ref for _, _, ref in cuts]
    if not prompts:
        return None
    room = pair.max_context - max(len(ids) for _, ids in prompts) - cfg.draft_tokens - 1
    decode = DecodeConfig(
        draft_tokens=cfg.draft_tokens, temperature=cfg.temperature,
        max_new_tokens=max(1, min(cfg.max_new_tokens, room)), seed=cfg.seed + prompts[0][0],
    )
    rule = make_rule(cfg.generator, cfg.alpha)
    tokens = token_space(pair)
    collector = BlockCollector(spec, [doc_id for doc_id, _ in prompts])
    for s in range(0, len(prompts), cfg.batch_size):
        batch = prompts[s : s + cfg.batch_size]
        collector.doc_ids = [doc_id for doc_id, _ in batch]
        collector.prompt_lens = [len(ids) for _, ids in batch]
        collector.references = references[s : s + cfg.batch_size]
        before = sum(len(p["doc_id"]) for p in collector.parts)
        speculative_generate(
            pair.drafter.model, pair.target.model, rule, [ids for _, ids in batch], decode, tokens,
            observer=collector,
        )
        if progress is not None:
            progress(sum(len(p["doc_id"]) for p in collector.parts) - before)
    if not collector.parts:
        return None
    rows = collector.rows()
    rollout = RolloutConfig(horizon=cfg.horizon, batch_size=cfg.rollout_batch_size)
    rows.update(consequence_labels(
        pair, collector.contexts, rows["drafted_id"], rows["token_id"], rollout, tokens,
        generated=collector.generated, references=collector.row_references,
    ))
    return rows
