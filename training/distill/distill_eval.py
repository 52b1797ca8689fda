"""Teacher-forced greedy agreement of a drafter with its target on held-out token blocks."""

from __future__ import annotations

import torch
from tqdm import tqdm

from training.distill.distill_module import distill_loss


@torch.inference_mode()
def agreement(drafter, target, blocks: torch.Tensor, vocab_size: int, batch_size: int = 8, desc: str = "agree") -> dict:
    """Share of positions where argmax q == argmax p, and the mean KL(p||q), over (N, T) blocks."""
    device = next(target.parameters()).device
    agree, kl_sum, tokens = 0, 0.0, 0
    for i in tqdm(range(0, blocks.shape[0], batch_size), desc=desc, unit="batch", leave=False):
        ids = blocks[i : i + batch_size].long().to(device)  # (b, T)
        p = target(input_ids=ids).logits[..., :vocab_size].flatten(0, 1)  # (b*T, V)
        q = drafter(input_ids=ids).logits[..., :vocab_size].flatten(0, 1)
        kl, a = distill_loss(q, p, None)
        agree += a
        kl_sum += float(kl) * ids.numel()
        tokens += ids.numel()
    return {"agreement": agree / max(tokens, 1), "kl": kl_sum / max(tokens, 1), "tokens": tokens}
